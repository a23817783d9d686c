"""Durable jobs: the queue (queue.py), workers (worker.py), webhooks (webhooks.py), async-invoke (invoke.py)."""

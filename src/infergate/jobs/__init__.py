"""Durable jobs: queue.py (the queue), worker.py (workers), webhooks.py, invoke.py (async-invoke)."""

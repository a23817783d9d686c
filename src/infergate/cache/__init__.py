"""Prompt caching: which prefixes to cache (plan) and where computed KV state lives (store)."""

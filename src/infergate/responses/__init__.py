"""The Responses API: translation to chat, output items, stream events, the runner (see runner.py)."""

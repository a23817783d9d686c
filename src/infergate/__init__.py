"""infergate: a self-hosted serverless inference platform (DigitalOcean Gradient / OpenAI compatible)."""

__version__ = "0.1.0"

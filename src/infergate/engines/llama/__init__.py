"""The embedded llama.cpp engine: model, scheduler, prompt, prefix cache, worker thread."""

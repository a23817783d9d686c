"""Backends. One module per backend; `registry.build_engine` picks one from a ModelSpec."""

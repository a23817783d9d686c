"""Alembic environment: always run with a connection handed in by `storage.db.migrate`."""

from alembic import context

from infergate.storage.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - alembic CLI use without our runner
    raise SystemExit("run migrations with `infergate migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""Persistence: SQLAlchemy tables, the database engine, migrations and repositories."""

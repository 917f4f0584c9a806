"""Alembic environment: always run online on the connection the job store hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through worker.jobs.migrations.upgrade_schema")
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

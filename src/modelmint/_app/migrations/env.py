"""Alembic environment: the app passes its open connection (see ``db.migrate``)."""

from __future__ import annotations

from alembic import context

from modelmint._app.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True)  # SQLite alters tables by copy
with context.begin_transaction():
    context.run_migrations()

"""ids and slugs are never reused: AUTOINCREMENT tables (SQLite), retired_slugs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("projects", "items", "jobs")


def upgrade() -> None:
    op.create_table(
        "retired_slugs",
        sa.Column("slug", sa.String(64), primary_key=True),
        sa.Column("retired", sa.String(32), nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":  # PostgreSQL sequences never go back already
        for table in TABLES:
            with op.batch_alter_table(table, recreate="always",
                                      table_kwargs={"sqlite_autoincrement": True}):
                pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in reversed(TABLES):
            with op.batch_alter_table(table, recreate="always",
                                      table_kwargs={"sqlite_autoincrement": False}):
                pass
    op.drop_table("retired_slugs")

"""object-detection projects: projects.kind, items.boxes, jobs.map50

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every project made before this revision classifies.
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False,
                                   server_default="classification"))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("boxes", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("map50", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("map50")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("boxes")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("kind")

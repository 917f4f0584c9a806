"""Retention: when a job's received instances and its results were purged."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("inputs_purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("results_purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_purged_at")
        batch.drop_column("inputs_purged_at")

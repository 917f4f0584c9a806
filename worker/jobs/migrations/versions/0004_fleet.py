"""Many workers: the queue a job was taken from, the worker process that ran it, worker hosts."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue", sa.String(64), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(255), nullable=True))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("host")
    op.drop_index("ix_jobs_finished_at", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker")
        batch.drop_column("queue")

"""Per-result ``drifted`` flag (verdicts given while the camera's drift alarm was open) and who closed a
drift alarm (``closed_by``: the operator who dismissed it, or the re-baseline that resolved it).

Revision ID: 0003_drift_flag
Revises: 0002_drift
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_drift_flag"
down_revision = "0002_drift"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's constraints in place; on PostgreSQL it is a plain ALTER
    with op.batch_alter_table("inspection_results") as batch:
        batch.add_column(sa.Column("drifted", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("drift_alarms") as batch:
        batch.add_column(sa.Column("closed_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drift_alarms") as batch:
        batch.drop_column("closed_by")
    with op.batch_alter_table("inspection_results") as batch:
        batch.drop_column("drifted")

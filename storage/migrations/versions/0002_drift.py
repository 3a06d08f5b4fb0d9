"""Drift alarms, per-camera image references, the frames kept while an alarm is open; defect families
and the flagged regions' embeddings.

Revision ID: 0002_drift
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_drift"
down_revision = "0001"
branch_labels = None
depends_on = None


def _big_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drift_alarms",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kinds", sa.String(length=128), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("onset_at", sa.Float(), nullable=False),
        sa.Column("onset_frame_id", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("rebaseline_since", sa.Float(), nullable=True),
        sa.Column("rebaseline_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("uq_drift_open_camera", "drift_alarms", ["product", "camera"], unique=True,
                    postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
    op.create_index("ix_drift_product_status", "drift_alarms", ["product", "status"])
    op.create_table(
        "drift_references",
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("image_png", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("camera"),
    )
    op.create_table(
        "drift_frames",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("alarm_id", _big_id(), nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("frame_id", sa.BigInteger(), nullable=False),
        sa.Column("captured_at", sa.Float(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("encoding", sa.String(length=8), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["alarm_id"], ["drift_alarms.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product", "sha256", name="uq_drift_frame_product_sha"),
    )
    op.create_index("ix_drift_frame_product_time", "drift_frames", ["product", "captured_at"])
    op.create_table(
        "defect_families",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("family", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("centroid", sa.JSON(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product", "family", name="uq_family_product_family"),
    )
    op.create_table(
        "defect_regions",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("result_id", _big_id(), nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("region", sa.Integer(), nullable=False),
        sa.Column("family", sa.Integer(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("cx", sa.Float(), nullable=False),
        sa.Column("cy", sa.Float(), nullable=False),
        sa.Column("captured_at", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["inspection_results.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "region", name="uq_region_result_region"),
    )
    op.create_index("ix_region_product_family_time", "defect_regions", ["product", "family", "captured_at"])


def downgrade() -> None:
    op.drop_index("ix_region_product_family_time", table_name="defect_regions")
    op.drop_table("defect_regions")
    op.drop_table("defect_families")
    op.drop_index("ix_drift_frame_product_time", table_name="drift_frames")
    op.drop_table("drift_frames")
    op.drop_table("drift_references")
    op.drop_index("ix_drift_product_status", table_name="drift_alarms")
    op.drop_index("uq_drift_open_camera", table_name="drift_alarms")
    op.drop_table("drift_alarms")

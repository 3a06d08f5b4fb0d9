"""Defect families: per-region embeddings, families with operator names, per-product threshold.

Revision ID: 0002_families
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_families"
down_revision = "0001"
branch_labels = None
depends_on = None


def _big_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "defect_regions",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("result_id", _big_id(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("captured_at", sa.Float(), nullable=False),
        sa.Column("component", sa.Integer(), nullable=False),
        sa.Column("cx", sa.Float(), nullable=False),
        sa.Column("cy", sa.Float(), nullable=False),
        sa.Column("x0", sa.Float(), nullable=False),
        sa.Column("y0", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("family_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["inspection_results.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "component", name="uq_region_result_component"),
    )
    op.create_index("ix_region_product_time", "defect_regions", ["product_id", "captured_at"])
    op.create_index("ix_region_product_family", "defect_regions", ["product_id", "family_id"])
    op.create_table(
        "defect_families",
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("family_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("total", sa.LargeBinary(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("merged_into", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"]),
        sa.PrimaryKeyConstraint("product_id", "family_id"),
    )
    op.create_table(
        "family_settings",
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("fitted_on", sa.Integer(), nullable=False),
        sa.Column("fitted_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"]),
        sa.PrimaryKeyConstraint("product_id"),
    )


def downgrade() -> None:
    op.drop_table("family_settings")
    op.drop_table("defect_families")
    op.drop_index("ix_region_product_family", table_name="defect_regions")
    op.drop_index("ix_region_product_time", table_name="defect_regions")
    op.drop_table("defect_regions")

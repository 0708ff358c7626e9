"""derived datasets: the job that wrote a dataset, its lineage, stored size, release,
expiry and deletion

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 13:00:00
"""

import sqlalchemy as sa
from alembic import op

import insitu.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("source_job_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("lineage", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("released_at", insitu.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("expires_at", insitu.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("deleted_at", insitu.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.create_index("ix_datasets_source_job_id", ["source_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_source_job_id")
        for column in (
            "deleted_at",
            "expires_at",
            "released_at",
            "stored_bytes",
            "lineage",
            "source_job_id",
        ):
            batch.drop_column(column)

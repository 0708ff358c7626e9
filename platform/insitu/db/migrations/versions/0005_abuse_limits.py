"""abuse limits: bundles owned by their uploaders, URL roots for registration, folded
audit rows for refused requests, course groups in their own namespace

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:00:00
"""

import sqlalchemy as sa
from alembic import op

import insitu.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundle_uploads",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", insitu.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest", "user_id"),
    )
    op.create_table(
        "url_roots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("granted_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", insitu.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix", "role", "user_id"),
    )
    with op.batch_alter_table("url_roots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_url_roots_user_id"), ["user_id"], unique=False)
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("count", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("last_at", insitu.db.models.UTCDateTime(timezone=True), nullable=True)
        )
    # A course's participants were members of a group named like the course, which an
    # ordinary group of the same name could collide with; course groups are now 'course:NAME'.
    op.execute(
        'UPDATE group_members SET "group" = \'course:\' || "group" WHERE user_id IN '
        "(SELECT users.id FROM users JOIN courses ON users.course_id = courses.id "
        'WHERE courses.name = group_members."group")'
    )


def downgrade() -> None:
    op.execute(
        'UPDATE group_members SET "group" = substr("group", 8) WHERE "group" LIKE \'course:%\''
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("last_at")
        batch_op.drop_column("count")
    with op.batch_alter_table("url_roots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_url_roots_user_id"))
    op.drop_table("url_roots")
    op.drop_table("bundle_uploads")

"""Alembic environment: runs migrations on the engine insitu hands over."""

from alembic import context
from sqlalchemy import create_engine

from insitu.db.engine import advisory_lock
from insitu.db.models import Base

MIGRATION_LOCK = 0x1A5_17E0  # the advisory lock's key: insitu's migrations
config = context.config
engine = config.attributes.get("engine") or create_engine(
    config.get_main_option("sqlalchemy.url") or "sqlite://"
)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        # Replicas started together migrate one at a time: the others wait here, then find
        # the schema at its newest and have nothing to do.
        advisory_lock(connection, MIGRATION_LOCK)
        context.run_migrations()
    connection.commit()

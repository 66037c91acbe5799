"""Alembic environment: runs on the connection handed in by ``studio.store.db.init_db``,
or opens one from ``sqlalchemy.url`` when used from the ``alembic`` command line."""

from alembic import context
from sqlalchemy import create_engine

from studio.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rewrites tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
            _run(conn)

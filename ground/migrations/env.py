"""Alembic's entry point for the ground store's migrations.

`ground.db.upgrade` runs them on a connection it has opened (and locked, so that two
processes starting at once do not both migrate): that connection arrives in
``config.attributes["connection"]``. A developer writing a new revision may instead name a
database in Alembic's ``sqlalchemy.url`` option; it is opened with `ground.db.create_engine`.
Offline (SQL script) mode is not supported: the store is always migrated on a live database.
"""

from __future__ import annotations

from alembic import context

from ground.db import create_engine
from ground.models import Base


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the ground store's migrations run on a live database only")
given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: call ground.db.upgrade(url), or set sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()

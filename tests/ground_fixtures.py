"""Databases for the ground-store tests: a SQLite file always, and a fresh PostgreSQL
database per test where SKYCOURIER_TEST_PG_URL names a server (skipped otherwise)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("sqlalchemy", reason="install the ground extra: pip install -e '.[ground]'")

from sqlalchemy import text
from sqlalchemy.engine import make_url

from ground.db import create_engine

PG_ENV = "SKYCOURIER_TEST_PG_URL"
PG_SKIP = (
    f"set {PG_ENV} to a PostgreSQL URL whose role may create databases, e.g. "
    "postgresql://skycourier:skycourier@127.0.0.1/skycourier_test (.ci/run installs Debian's "
    "postgresql, starts it and sets this up)"
)


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test, dropped afterwards."""
    base = postgres_url()
    if base is None:
        pytest.skip(PG_SKIP)
    name = f"skycourier_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A fresh database of each kind: a SQLite file, and PostgreSQL where available."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ground.db"
    return request.getfixturevalue("pg_url")

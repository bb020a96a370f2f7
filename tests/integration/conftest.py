"""Session fixtures that start the real stack (Kafka, PostgreSQL primary + replica, PgBouncer,
Redis, and our services) on free ports in a scratch state dir, and stop it afterwards."""

import uuid
from collections.abc import Callable, Iterator

import pytest

from infra import postgres
from infra.config import StackConfig
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.stack import running_stack, scratch_config, session_storage, superuser


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of one storage's own features (`@pytest.mark.timescaledb`, `.native`) are
    deselected, not skipped, when the session runs the other storage."""
    other = "native" if session_storage() == "timescaledb" else "timescaledb"
    deselected = [item for item in items if item.get_closest_marker(other)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(other)]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Two ingest processes: every test also exercises the scale-out path.
    with running_stack(scratch_config(ingest_processes=2)) as running:
        yield running


@pytest.fixture(scope="session")
def config(stack: Stack) -> StackConfig:
    return stack.config


@pytest.fixture(scope="session")
def token(config: StackConfig) -> Callable[..., str]:
    def make(role: Role, sub: str, **kwargs: object) -> str:
        return issue_token(config.jwt_private_key, sub=sub, role=role, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def fresh_database(config: StackConfig) -> Iterator[str]:
    """An empty database on the stack's primary, owned by the app role."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    with superuser(config, "postgres") as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {postgres.APP_USER}")
    try:
        yield postgres.dsn(config, "primary", dbname=name)
    finally:
        with superuser(config, "postgres") as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")

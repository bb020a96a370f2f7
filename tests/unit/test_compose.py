"""The compose file and the scripts its containers run, generated from the component
registry (infra/containers/compose.py)."""

import base64
import stat
import uuid
from pathlib import Path

import pytest

from infra import kafka, procs
from infra.config import StackConfig
from infra.containers import compose
from infra.containers.run import IMAGE_KAFKA_LIB, IMAGE_PYTHON


@pytest.fixture(autouse=True)
def _as_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # What is written, not to whom it is given: the users are the image's (and may not
    # exist on the machine that runs the unit tests).
    monkeypatch.setattr(procs, "running_as_root", lambda: False)


def scratch(tmp_path: Path, postgres_ha: bool = True) -> StackConfig:
    return compose.stack_config(postgres_ha).model_copy(update={"state_dir": tmp_path})


@pytest.mark.parametrize(
    ("path", "postgres_ha"), [(compose.COMPOSE_FILE, True), (compose.PLAIN_COMPOSE_FILE, False)]
)
def test_the_committed_compose_files_are_current(
    tmp_path: Path, path: Path, postgres_ha: bool
) -> None:
    assert compose.render_compose(scratch(tmp_path, postgres_ha)) == path.read_text(), (
        f"{path} is stale: run python -m infra.containers.compose yaml"
    )


def test_the_patroni_layout_starts_the_database_before_the_bootstrap(tmp_path: Path) -> None:
    config = scratch(tmp_path)
    services = compose.compose_document(config)["services"]
    assert "postgres-primary" not in services and "postgres-replica" not in services
    assert services["config"]["command"][-1] == "config"
    assert services["bootstrap"]["command"][-1] == "bootstrap"
    assert set(services["bootstrap"]["depends_on"]) == {"config", "kafka", "haproxy-db"}
    # The bootstrap waits for a leader behind HAProxy: what that needs cannot wait for it.
    for name, image in (("etcd", "etcd"), ("postgres-1", "patroni"), ("haproxy-db", "haproxy")):
        assert services[name]["image"] == f"localhost/telemetry/{image}:latest"
        assert "bootstrap" not in services[name]["depends_on"], name
    assert services["postgres-2"]["depends_on"]["etcd"] == {"condition": "service_healthy"}
    assert "bootstrap" in services["pgbouncer"]["depends_on"]

    compose.write_config(config)
    scripts = compose.scripts_dir(config)
    for node in (1, 2):
        text = (scripts / f"postgres-{node}.sh").read_text()
        assert (
            text.splitlines()[-1]
            == f"exec /usr/bin/patroni {tmp_path}/postgres/node-{node}/patroni.yml"
        )
        assert (tmp_path / "postgres" / f"node-{node}" / "patroni.yml").exists()
    assert "haproxy -c" in (scripts / "haproxy-db.sh").read_text()
    assert (scripts / "etcd.sh").read_text().splitlines()[-1].startswith("exec /usr/bin/etcd ")


def test_compose_runs_every_component_of_up_but_the_supervisor(tmp_path: Path) -> None:
    services = compose.compose_document(scratch(tmp_path))["services"]
    assert set(services) == {
        "config", "bootstrap", "kafka", "redis", "etcd", "postgres-1", "postgres-2",
        "haproxy-db", "pgbouncer", "ingest-1", "streams-1", "api-1", "photo-worker-1",
        "notifier-1", "haproxy", "edge", "ops-exporter", "redis-exporter", "nginx-exporter",
        "postgres-1-exporter", "postgres-2-exporter", "node-exporter", "alertmanager",
        "prometheus",
    }  # fmt: skip
    # The lighter layout's file: a primary and a replica instead.
    plain = compose.compose_document(scratch(tmp_path / "plain", postgres_ha=False))["services"]
    patroni = {"etcd", "postgres-1", "postgres-2", "haproxy-db"}
    patroni |= {"postgres-1-exporter", "postgres-2-exporter"}
    assert set(plain) == set(services) - patroni | {
        "postgres-primary",
        "postgres-replica",
        "postgres-primary-exporter",
        "postgres-replica-exporter",
    }
    assert plain["config"]["command"][-2:] == ["config", "--no-postgres-ha"]
    assert plain["bootstrap"]["command"][-2:] == ["bootstrap", "--no-postgres-ha"]
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert service["volumes"] == [f"{compose.VOLUME}:{compose.STATE_DIR}"], name
    services = plain
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert service["volumes"] == [f"{compose.VOLUME}:{compose.STATE_DIR}"], name
    # Dependencies as `up` orders them, after the one-shot steps.
    assert services["pgbouncer"]["depends_on"] == {
        "config": {"condition": "service_completed_successfully"},
        "postgres-primary": {"condition": "service_healthy"},
        "postgres-replica": {"condition": "service_healthy"},
        "bootstrap": {"condition": "service_completed_successfully"},
    }
    assert "bootstrap" not in services["kafka"]["depends_on"]
    assert services["postgres-primary"]["user"] == "postgres"
    assert services["postgres-primary"]["stop_signal"] == "SIGINT"
    assert services["api-1"]["healthcheck"]["test"][-1] == "http://127.0.0.1:18101/readyz"


def test_the_scripts_run_up_s_commands_from_the_images_paths(tmp_path: Path) -> None:
    config = scratch(tmp_path, postgres_ha=False)
    compose.write_config(config)
    scripts = compose.scripts_dir(config)

    kafka = (scripts / "kafka.sh").read_text()
    assert f"{IMAGE_KAFKA_LIB}/*" in kafka
    assert "kafka.tools.StorageTool format -t" in kafka  # once, before the broker
    assert kafka.splitlines()[-1].startswith("exec java ")

    primary = (scripts / "postgres-primary.sh").read_text()
    assert "initdb" in primary and "shared_preload_libraries=timescaledb" in primary
    replica = (scripts / "postgres-replica.sh").read_text()
    assert "pg_basebackup" in replica and "PGPASSWORD=" in replica

    api = scripts / "api-1.sh"
    text = api.read_text()
    assert f"exec {IMAGE_PYTHON} -m api" in text
    assert "export API_WRITE_DSN=" in text
    # It holds the database password: its owner's only.
    assert stat.S_IMODE(api.stat().st_mode) == 0o600

    # The configuration the components read is written too, and the bootstrap's input.
    assert (tmp_path / "kafka" / "server.properties").exists()
    assert (tmp_path / "pgbouncer" / "pgbouncer.ini").exists()
    assert (tmp_path / "run" / "haproxy.d" / "haproxy.cfg").exists()
    assert (tmp_path / "run" / "nginx.conf").exists()
    assert (tmp_path / "run" / "prometheus.d" / "prometheus.yml").exists()
    assert (tmp_path / "run" / "prometheus.d" / "rules.yml").exists()


def test_config_keeps_what_exists(tmp_path: Path) -> None:
    config = scratch(tmp_path)
    compose.write_config(config)
    key = config.jwt_private_key.read_bytes()
    cluster = (tmp_path / "kafka" / "cluster-id").read_text()
    compose.write_config(config)
    assert config.jwt_private_key.read_bytes() == key
    assert (tmp_path / "kafka" / "cluster-id").read_text() == cluster


def test_a_kafka_cluster_id_is_a_base64url_uuid_made_once(tmp_path: Path) -> None:
    one, other = scratch(tmp_path / "one"), scratch(tmp_path / "other")
    cluster_id = kafka.cluster_id(one)
    assert len(cluster_id) == 22 and "=" not in cluster_id
    assert base64.urlsafe_b64decode(cluster_id + "==") and kafka.cluster_id(one) == cluster_id
    assert cluster_id != kafka.cluster_id(other)


def test_a_kafka_cluster_id_never_begins_with_a_dash() -> None:
    # 0xf8 encodes as '-' in base64url: the storage tool would take such an id for an option.
    made = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x08" + bytes(15))])
    assert kafka.new_cluster_id(lambda: next(made)) == "CAAAAAAAAAAAAAAAAAAAAA"

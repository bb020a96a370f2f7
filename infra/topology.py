"""How many processes of each service the running stack has (asked for by `up --api N`,
changed by `telemetry scale`) and where they run (TELEMETRY_RUNTIME at `up`), read by every
later command (and the supervisor), so they all see the same components."""

import json
from pathlib import Path

from infra.config import StackConfig
from infra.procs import StackError

# The service names `scale` takes -> the StackConfig field holding their count.
SCALABLE = {
    "ingest": "ingest_processes",
    "api": "api_processes",
    "notifier": "notifier_processes",
    "streams": "stream_workers",
    "photo-worker": "photo_workers",
}
# Process N of a service listens on its base port + N - 1, and the bases leave this many
# ports to each (scratch stacks reserve exactly this span).
MAX_PROCESSES = 8


def _path(config: StackConfig) -> Path:
    return config.run_dir / "topology.json"


# What `up` records: the counts, the runtime, Kafka's brokers and PostgreSQL's layout.
RECORDED = (*SCALABLE.values(), "runtime", "kafka_brokers", "postgres_ha")


def shape(config: StackConfig) -> dict[str, object]:
    return {field: getattr(config, field) for field in RECORDED}


def recorded(config: StackConfig) -> StackConfig:
    """`config` with the running stack's counts and runtime, when it has recorded them."""
    path = _path(config)
    if not path.exists():
        return config
    return config.model_copy(update=json.loads(path.read_text()))


def requested(config: StackConfig) -> StackConfig:
    """For `up`: the running stack's counts, overridden by those `config` sets explicitly
    (`up --api 3`, or a test's scratch stack); recorded as the new topology."""
    explicit = {f: getattr(config, f) for f in RECORDED if f in config.model_fields_set}
    chosen = recorded(config).model_copy(update=explicit)
    record(chosen)
    return chosen


def with_count(config: StackConfig, service: str, count: int) -> StackConfig:
    """For `scale`: the topology with `service` at `count` processes, recorded."""
    if service not in SCALABLE:
        raise StackError(f"cannot scale {service!r}: choose one of {', '.join(SCALABLE)}")
    if not 0 <= count <= MAX_PROCESSES:
        raise StackError(f"{service} can run 0 to {MAX_PROCESSES} processes, not {count}")
    changed = config.model_copy(update={SCALABLE[service]: count})
    record(changed)
    return changed


def record(config: StackConfig) -> None:
    path = _path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(shape(config)))
    tmp.replace(path)


def forget(config: StackConfig) -> None:
    _path(config).unlink(missing_ok=True)

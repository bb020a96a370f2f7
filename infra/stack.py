"""`up`, `down` and `status` of the whole local stack, recorded in one state file."""

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import install, kafka, migrate, pgbouncer, postgres, redis, services
from infra.config import REPO_ROOT, StackConfig
from infra.procs import (
    ProcessRef,
    StackError,
    ensure_port_free,
    spawn,
    stop,
    wait_until,
    write_private,
)
from runtime.auth import generate_keypair

Reporter = Callable[[str], None]
SIMULATOR = "simulator"


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Record:
    """One running component as written to the state file."""

    name: str
    ref: ProcessRef
    endpoint: dict[str, str]
    stop_signal: int = signal.SIGTERM

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.ref.pid,
            "start_ticks": self.ref.start_ticks,
            "stop_signal": self.stop_signal,
            **self.endpoint,
        }

    @classmethod
    def from_json(cls, name: str, raw: dict[str, Any]) -> "Record":
        endpoint = {k: v for k, v in raw.items() if k not in {"pid", "start_ticks", "stop_signal"}}
        return cls(name, ProcessRef(raw["pid"], raw["start_ticks"]), endpoint, raw["stop_signal"])


class StateFile:
    """The components `up` started, in start order; `down` stops exactly these."""

    def __init__(self, config: StackConfig) -> None:
        self.path: Path = config.run_dir / "stack.json"

    def load(self) -> dict[str, Record]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text())
        return {name: Record.from_json(name, value) for name, value in raw.items()}

    def save(self, records: dict[str, Record]) -> None:
        # It holds DSNs with the database password: owner only.
        tmp = self.path.with_suffix(".tmp")
        write_private(tmp, json.dumps({n: r.as_json() for n, r in records.items()}, indent=2))
        tmp.replace(self.path)


def endpoints(config: StackConfig) -> dict[str, dict[str, str]]:
    """Every component's address, by name (the shape of `telemetry status --json`)."""
    result: dict[str, dict[str, str]] = {
        "kafka": {"bootstrap": config.kafka_bootstrap},
        "postgres-primary": {"dsn": postgres.dsn(config, "primary")},
        "postgres-replica": {"dsn": postgres.dsn(config, "replica")},
        "pgbouncer": {
            "dsn": pgbouncer.dsn(config, read_only=False),
            "dsn_read_write": pgbouncer.dsn(config, read_only=False),
            "dsn_read_only": pgbouncer.dsn(config, read_only=True),
        },
        "redis": {"url": redis.url(config)},
    }
    for spec in services.specs(config):
        result[spec.name] = {"url": spec.url}
    return result


def _readiness(config: StackConfig) -> dict[str, Callable[[], bool]]:
    checks: dict[str, Callable[[], bool]] = {
        "kafka": lambda: kafka.ready(config),
        "postgres-primary": lambda: postgres.ready(config, "primary"),
        "postgres-replica": lambda: postgres.ready(config, "replica"),
        "pgbouncer": lambda: pgbouncer.ready(config),
        "redis": lambda: redis.ready(config),
    }
    for spec in services.specs(config):
        checks[spec.name] = lambda spec=spec: services.ready(spec)  # type: ignore[misc]
    return checks


def _ports(config: StackConfig) -> dict[str, list[tuple[int, str]]]:
    ports = {
        "kafka": [
            (config.kafka_port, "TELEMETRY_KAFKA_PORT"),
            (config.kafka_controller_port, "TELEMETRY_KAFKA_CONTROLLER_PORT"),
        ],
        "postgres-primary": [(config.postgres_primary_port, "TELEMETRY_POSTGRES_PRIMARY_PORT")],
        "postgres-replica": [(config.postgres_replica_port, "TELEMETRY_POSTGRES_REPLICA_PORT")],
        "pgbouncer": [(config.pgbouncer_port, "TELEMETRY_PGBOUNCER_PORT")],
        "redis": [(config.redis_port, "TELEMETRY_REDIS_PORT")],
    }
    env_var = {
        "ingest": "TELEMETRY_INGEST_PORT",
        "api": "TELEMETRY_API_PORT",
        "streams": "TELEMETRY_STREAMS_WEB_PORT",
    }
    for spec in services.specs(config):
        ports[spec.name] = [(spec.port, env_var[spec.module])]
    return ports


class Stack:
    def __init__(self, config: StackConfig, report: Reporter = _quiet) -> None:
        self.config = config
        self.report = report
        self.state = StateFile(config)
        self.records = self.state.load()
        self._ready = _readiness(config)

    # --- helpers ---------------------------------------------------------------
    def _running(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.ref.alive()

    def _start(
        self, name: str, starter: Callable[[], ProcessRef], stop_signal: int = signal.SIGTERM
    ) -> None:
        if self._running(name):
            self.report(f"{name} already running")
            return
        for port, env_var in _ports(self.config)[name]:
            ensure_port_free(port, name, env_var)
        self.report(f"starting {name}")
        ref = starter()
        self.records[name] = Record(name, ref, endpoints(self.config)[name], stop_signal)
        self.state.save(self.records)

    def _wait_ready(self, name: str) -> None:
        self.report(f"waiting for {name}")
        record = self.records[name]
        check = self._ready[name]

        def ok() -> bool:
            if not record.ref.alive():
                raise StackError(
                    f"{name} exited during start-up; see {self._log(name)}:\n{self._tail(name)}"
                )
            return check()

        if not wait_until(ok, self.config.startup_timeout_s, interval_s=0.25):
            raise StackError(
                f"{name} not healthy after {self.config.startup_timeout_s:.0f} s; "
                f"see {self._log(name)}:\n{self._tail(name)}"
            )

    def _log(self, name: str) -> Path:
        return self.config.logs_dir / f"{name}.log"

    def _tail(self, name: str, lines: int = 15) -> str:
        log = self._log(name)
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # --- the commands ----------------------------------------------------------
    def up(self) -> None:
        """Install what is missing, start everything, migrate, wait until healthy.
        On failure, stops what this call started and re-raises: nothing half-started stays."""
        before = set(self.records)
        try:
            self._up()
        except BaseException:
            self.report("start-up failed: stopping what this run started")
            self._stop([n for n in self.records if n not in before])
            raise

    def _up(self) -> None:
        cfg = self.config
        self.report("checking Debian packages")
        installed = install.ensure_debian_packages()
        if installed:
            self.report(f"installed {' '.join(installed)}")
        self.report("checking Kafka jars (Maven Central)")
        if install.ensure_kafka_jars(cfg):
            self.report(f"fetched Kafka {cfg.kafka_version}")
        for path in (cfg.state_dir, cfg.logs_dir, cfg.run_dir, cfg.jwt_private_key.parent):
            path.mkdir(parents=True, exist_ok=True)
        if not cfg.jwt_private_key.exists():
            generate_keypair(cfg.jwt_private_key, cfg.jwt_public_key)

        # Kafka's JVM takes longest to come up: start it first, wait for it last.
        self._start("kafka", lambda: kafka.start(cfg))
        self._start("redis", lambda: redis.start(cfg))
        if postgres.init_primary(cfg):
            self.report("initialised the PostgreSQL primary")
        self._start("postgres-primary", lambda: postgres.start(cfg, "primary"), signal.SIGINT)
        self.report("waiting for postgres-primary")
        if not wait_until(lambda: postgres.ensure_superuser_ready(cfg), cfg.startup_timeout_s, 0.2):
            raise StackError(f"postgres-primary did not start:\n{self._tail('postgres-primary')}")
        postgres.bootstrap_roles(cfg)
        self._wait_ready("postgres-primary")
        self.report("applying migrations")
        applied = migrate.apply_all(postgres.dsn(cfg, "primary"))
        if applied:
            self.report(f"applied migrations {', '.join(applied)}")
        if postgres.init_replica(cfg):
            self.report("cloned the replica (pg_basebackup)")
        self._start("postgres-replica", lambda: postgres.start(cfg, "replica"), signal.SIGINT)
        self._wait_ready("postgres-replica")
        self._start("pgbouncer", lambda: pgbouncer.start(cfg))
        self._wait_ready("pgbouncer")
        self._wait_ready("redis")
        self._wait_ready("kafka")
        self.report("creating Kafka topics")
        kafka.create_topics(cfg)

        specs = services.specs(cfg)
        for spec in specs:
            self._start(spec.name, lambda spec=spec: services.start(cfg, spec))  # type: ignore[misc]
        for spec in specs:
            self._wait_ready(spec.name)
        self.report("all components healthy")

    def start_simulator(self, drivers: int, interval_s: float = 4.0) -> None:
        """A simulated fleet posting to ingest until `down`, logging to simulator.log."""
        if self._running(SIMULATOR):
            self.report("simulator already running")
            return
        self.report(f"starting a simulated fleet of {drivers} drivers")
        argv = [
            sys.executable, "-m", "infra.cli", "simulate", "--plain",
            "--drivers", str(drivers), "--interval", str(interval_s),
            "--duration", str(365 * 24 * 3600),
        ]  # fmt: skip
        ref = spawn(
            argv,
            log_path=self._log(SIMULATOR),
            env={"TELEMETRY_STATE_DIR": str(self.config.state_dir)},
            cwd=REPO_ROOT,
        )
        self.records[SIMULATOR] = Record(SIMULATOR, ref, {"drivers": str(drivers)})
        self.state.save(self.records)

    def _stop(self, names: list[str]) -> None:
        for name in reversed(names):
            record = self.records.get(name)
            if record is None:
                continue
            if record.ref.alive():
                self.report(f"stopping {name} (pid {record.ref.pid})")
                stop(record.ref, sig=record.stop_signal, timeout_s=30)
            del self.records[name]
            self.state.save(self.records)

    def down(self) -> None:
        self._stop(list(self.records))

    def urls(self, service: str) -> list[str]:
        """The URLs of the running processes of `service` (`ingest` gives ingest-1...)."""
        return [
            r.endpoint["url"]
            for n, r in self.records.items()
            if n.startswith(f"{service}-") and r.ref.alive()
        ]

    def _healthy(self, name: str, endpoint: dict[str, str]) -> bool:
        check = self._ready.get(name)
        if check is not None:
            return check()
        # A recorded HTTP service beyond the configured count (`up --ingest 3`), or the
        # simulator, which has no endpoint: running is all it can be.
        return services.url_ready(endpoint["url"], name) if "url" in endpoint else True

    def status(self) -> dict[str, dict[str, Any]]:
        """Every expected component, plus any recorded one (`up --ingest 3` adds ingest-3)."""
        expected = endpoints(self.config)
        names = list(expected) + [n for n in self.records if n not in expected]
        result: dict[str, dict[str, Any]] = {}
        for name in names:
            record = self.records.get(name)
            alive = record is not None and record.ref.alive()
            endpoint = record.endpoint if record is not None else expected[name]
            result[name] = {
                **endpoint,
                "pid": record.ref.pid if record is not None and alive else None,
                "running": alive,
                "healthy": alive and self._healthy(name, endpoint),
                # The simulator is a guest: the platform does not need it to be healthy.
                "required": name != SIMULATOR,
            }
        return result

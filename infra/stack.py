"""`up`, `down` and `status` of the whole local stack, recorded in one state file."""

import contextlib
import fcntl
import functools
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infra import (
    edge,
    haproxy,
    install,
    keys,
    prometheus,
    runtimes,
    services,
    storage,
    supervisor,
    topology,
)
from infra.components import Component, components
from infra.config import REPO_ROOT, StackConfig
from infra.containers import engine as containers_engine
from infra.containers import images
from infra.procs import (
    APP_USER,
    ProcessRef,
    StackError,
    chown_for,
    ensure_port_free,
    free_port,
    own_tree,
    port_open,
    spawn,
    stop,
    wait_until,
    write_private,
)

Reporter = Callable[[str], None]
SIMULATOR = "simulator"
# How long a rolling restart or a scale-down waits for a drained process's connections to end.
DRAIN_TIMEOUT_S = 30.0


class ExitedDuringStartup(StackError):
    """A process that exited while the stack waited for it to become ready (it may be started
    again)."""

    def __init__(self, message: str, ref: ProcessRef) -> None:
        super().__init__(message)
        self.ref = ref


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Record:
    """One running component as written to the state file."""

    name: str
    ref: ProcessRef
    endpoint: dict[str, str]
    stop_signal: int = signal.SIGTERM
    # Restarted by the supervisor when it dies (our services and the edge tiers).
    supervised: bool = False
    restarts: int = 0
    # The supervisor stopped restarting it after repeated crashes.
    gave_up: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.ref.pid,
            "start_ticks": self.ref.start_ticks,
            "stop_signal": self.stop_signal,
            "supervised": self.supervised,
            "restarts": self.restarts,
            "gave_up": self.gave_up,
            **self.endpoint,
        }

    @classmethod
    def from_json(cls, name: str, raw: dict[str, Any]) -> "Record":
        raw = dict(raw)
        ref = ProcessRef(raw.pop("pid"), raw.pop("start_ticks"))
        stop_signal = raw.pop("stop_signal")
        supervised = raw.pop("supervised", False)
        restarts = raw.pop("restarts", 0)
        gave_up = raw.pop("gave_up", False)
        return cls(name, ref, raw, stop_signal, supervised, restarts, gave_up)


class StateFile:
    """The components `up` started, in start order; `down` stops exactly these. Several
    processes change it (the CLI, tests, the supervisor): each change is a read, modify and
    write under an exclusive lock, of the named entries only."""

    def __init__(self, config: StackConfig) -> None:
        self.path: Path = config.run_dir / "stack.json"
        self._lock_path = config.run_dir / "stack.lock"

    def load(self) -> dict[str, Record]:
        # Writes replace the file whole: a reader never sees half of one.
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text())
        return {name: Record.from_json(name, value) for name, value in raw.items()}

    @contextlib.contextmanager
    def change(self) -> Iterator[dict[str, Record]]:
        """The records, to change in place; saved when the block ends without error."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.load()
            yield records
            self._save(records)

    def put(self, record: Record) -> None:
        with self.change() as records:
            records[record.name] = record

    def remove(self, name: str) -> Record | None:
        with self.change() as records:
            return records.pop(name, None)

    def _save(self, records: dict[str, Record]) -> None:
        # It holds DSNs with the database password: owner only.
        tmp = self.path.with_suffix(".tmp")
        write_private(tmp, json.dumps({n: r.as_json() for n, r in records.items()}, indent=2))
        tmp.replace(self.path)


class Stack:
    """The local stack: its components (infra/components.py), the state file of what runs,
    and the operations on both. `start`, `stop`, `kill` and `crash` act on one component,
    for tests and operators; `up`, `down` and `scale` on all of them."""

    def __init__(self, config: StackConfig, report: Reporter = _quiet) -> None:
        # What the caller asked for (`up` honours the counts it sets explicitly), and the
        # configuration of what runs: the same, with the running stack's topology.
        self._requested = config
        self.config = topology.recorded(config)
        self.report = report
        self.state = StateFile(config)
        self.components = {c.name: c for c in components(self.config, report)}
        self._readied: set[str] = set()

    def _reconfigure(self, config: StackConfig) -> None:
        self.config = config
        self.components = {c.name: c for c in components(config, self.report)}

    @property
    def records(self) -> dict[str, Record]:
        """What runs now, as the state file says (the supervisor changes it too)."""
        return self.state.load()

    # --- one component ----------------------------------------------------------
    def running(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.ref.alive()

    def start(self, name: str) -> None:
        """Starts one component (its dependencies must be up) and waits until it is ready."""
        self._start(self.components[name])
        self._readied.discard(name)
        self._ensure_ready(name)

    def stop(self, name: str, sig: int | None = None) -> None:
        """Stops one component with its own stop signal (or `sig`) and forgets it: forgotten
        first, so the supervisor never restarts what is being stopped."""
        record = self.state.remove(name)
        self._readied.discard(name)
        if record is not None and record.ref.alive():
            self.report(f"stopping {name} (pid {record.ref.pid})")
            stop(record.ref, sig=record.stop_signal if sig is None else sig, timeout_s=30)

    def kill(self, name: str) -> None:
        """SIGKILL, and forgotten: stays down until started again (fault tests)."""
        self.stop(name, sig=signal.SIGKILL)

    def crash(self, name: str) -> None:
        """SIGKILL, still recorded: a crash, which the supervisor repairs for a service."""
        record = self.records[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.ref.pid, signal.SIGKILL)

    def kill_stuck(self, name: str, stuck: ProcessRef) -> None:
        """SIGKILL, still recorded (as `crash`), if `name` is still the process `stuck`."""
        record = self.records.get(name)
        if record is not None and record.ref == stuck and stuck.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck.pid, signal.SIGKILL)

    def restart(self, name: str, dead: ProcessRef) -> bool:
        """Starts `name` again if it is still recorded as the process `dead`, which has
        exited; False when another caller got there first, it was stopped meanwhile, or its
        port is not free yet (try again later)."""
        component = self.components.get(name)
        if component is None:
            return False
        with self.state.change() as records:
            record = records.get(name)
            if record is None or record.ref != dead or dead.alive():
                return False
            if any(port_open(port) for port, _ in component.ports):
                return False  # the dead process's threads still hold it, for a moment
            component.prepare()
            ref = runtimes.spawn(self.config, component.command())
            records[name] = replace(record, ref=ref, restarts=record.restarts + 1, gave_up=False)
        self._readied.discard(name)
        return True

    def give_up(self, name: str, dead: ProcessRef) -> None:
        """Marks `name` as not restarted any more (status says so)."""
        with self.state.change() as records:
            record = records.get(name)
            if record is not None and record.ref == dead:
                records[name] = replace(record, gave_up=True)

    def _start(self, component: Component) -> None:
        if self.running(component.name):
            self.report(f"{component.name} already running")
            return
        for port, env_var in component.ports:
            ensure_port_free(port, component.name, env_var)
        component.prepare()
        self.report(f"starting {component.name}")
        ref = runtimes.spawn(self.config, component.command())
        self.state.put(
            Record(
                component.name,
                ref,
                component.endpoint,
                component.stop_signal,
                supervised=component.supervised,
            )
        )

    def _ensure_ready(self, name: str) -> None:
        if name in self._readied:
            return
        component = self.components[name]
        attempt = 1
        while True:
            try:
                self._wait_ready(name, component.startup_ready or component.ready)
                break
            except ExitedDuringStartup as exc:
                if attempt >= component.start_attempts:
                    raise
                attempt += 1
                self.report(f"{exc}\nstarting {name} again (attempt {attempt})")
                # The supervisor may have started it again already: then wait for that one.
                if not wait_until(functools.partial(self._replace, name, exc.ref), 10):
                    raise
        component.on_ready()
        self._readied.add(name)

    def _replace(self, name: str, dead: ProcessRef) -> bool:
        """Restarted here, or by someone else already (the supervisor), or stopped."""
        if self.restart(name, dead):
            return True
        record = self.records.get(name)
        return record is None or record.ref != dead

    def _wait_ready(self, name: str, check: Callable[[], bool]) -> None:
        self.report(f"waiting for {name}")

        def ok() -> bool:
            # Read each time: the supervisor may have replaced the process meanwhile.
            record = self.records.get(name)
            if record is None:
                raise StackError(f"{name} was stopped while starting")
            if not record.ref.alive():
                raise ExitedDuringStartup(
                    f"{name} exited during start-up; see {self._log(name)}:\n"
                    + self.log_excerpt(name),
                    record.ref,
                )
            return check()

        if not wait_until(ok, self.config.startup_timeout_s, interval_s=0.25):
            raise StackError(
                f"{name} not healthy after {self.config.startup_timeout_s:.0f} s; "
                f"see {self._log(name)}:\n{self.log_excerpt(name)}"
            )

    def _log(self, name: str) -> Path:
        return self.config.logs_dir / f"{name}.log"

    def log_excerpt(self, name: str, lines: int = 15) -> str:
        """The log's last lines, preceded by its last error and what follows it: a service
        that fails often logs its shutdown after the reason."""
        log = self._log(name)
        if not log.exists():
            return ""
        text = log.read_text(errors="replace").splitlines()
        tail = text[-lines:]
        marks = ("Traceback", "[ERROR]", "[CRITICAL]", " ERROR ", " CRITICAL ")
        errors = [i for i, line in enumerate(text) if any(m in line for m in marks)]
        if errors and errors[-1] < len(text) - lines:
            start = end = errors[-1]
            # A traceback's frames are indented; the line after them is the exception.
            while end + 1 < len(text) and text[end + 1].startswith((" ", "\t")):
                end += 1
            block = text[start : end + 2]
            if len(block) > 30:  # a deep stack (Faust's services): its head and its end
                block = [*block[:3], "...", *block[-15:]]
            tail = [*block, "...", *tail]
        return "\n".join(tail)

    # --- the whole stack ---------------------------------------------------------
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
        for step in install.ensure_users(cfg):
            self.report(step)
        self.report("checking Kafka jars (Maven Central)")
        if install.ensure_kafka_jars(cfg):
            self.report(f"fetched Kafka {cfg.kafka_version}")
        ensure_storage = storage.prepare
        if cfg.runtime == "containers":
            self.report("checking Podman and the container images")
            containers_engine.ensure_installed()
            for reference in images.build(cfg, self.report):
                self.report(f"built {reference}")
            # The postgres image has TimescaleDB built in: nothing to install here.
            ensure_storage = functools.partial(storage.prepare, ensure=lambda _c, _r: None)
        self.report(f"storage: {ensure_storage(cfg, self.report)}")
        for path in (cfg.state_dir, cfg.logs_dir, cfg.run_dir, cfg.jwt_private_key.parent):
            path.mkdir(parents=True, exist_ok=True)
        keys.ensure(cfg)
        # The counts asked for here (`up --api 3`) become the running stack's topology;
        # HAProxy's configuration follows it when it is ready.
        self._reconfigure(topology.requested(self._requested))
        for path in services.writable_dirs(cfg):
            own_tree(path, APP_USER)
        # No secret in it; the ops exporter reads it, as the services' user.
        write_private(supervisor.config_path(self.config), self.config.model_dump_json())
        chown_for(supervisor.config_path(self.config), APP_USER)
        # Each component starts once its dependencies are ready; the others are waited
        # for at the end, so slow starters (Kafka's JVM) overlap with the rest.
        for component in self.components.values():
            for dependency in component.after:
                self._ensure_ready(dependency)
            self._start(component)
        for name in self.components:
            self._ensure_ready(name)
        self.report("all components healthy")

    def scale(self, service: str, count: int) -> None:
        """Runs `count` processes of `service`: starts the missing ones and waits until they
        are ready, reloads HAProxy's configuration (established connections stay on the old
        workers), then stops the ones past `count` gracefully."""
        if not self.running(supervisor.NAME):
            raise StackError("the stack is not running: start it with 'telemetry up'")
        self._reconfigure(topology.with_count(self.config, service, count))
        wanted = [n for n in self.components if n.startswith(f"{service}-")]
        for name in wanted:
            for dependency in self.components[name].after:
                self._ensure_ready(dependency)
            self._start(self.components[name])
        for name in wanted:
            self._ensure_ready(name)
        extra = [
            n
            for n in self.records
            if n.startswith(f"{service}-")
            and n not in self.components
            and n[len(service) + 1 :].isdigit()
        ]
        # Drained before the reload: the old workers keep that state, so none of them
        # sends a request (or reuses a pooled connection) to a process being stopped.
        for name in extra:
            self._drain(service, name)
        if self.running(haproxy.NAME) and haproxy.follow(self.config):
            self.report("reloaded HAProxy with the new topology")
        if self.running(prometheus.NAME) and prometheus.follow(self.config):
            self.report("reloaded Prometheus with the new scrape targets")
        for name in sorted(extra, reverse=True):
            self.stop(name)

    def roll(self, service: str) -> None:
        """Replaces `service`'s processes one by one, none of its requests failing: one
        process more first (so each one's absence costs no capacity, even with one), then
        for each: drained in HAProxy (no new request; those in flight finish), stopped
        gracefully, started, ready, back in HAProxy; the extra one goes last, as `scale`
        stops one. Consumers (the stream, the photo worker) rebalance instead of draining."""
        if not self.running(supervisor.NAME):
            raise StackError("the stack is not running: start it with 'telemetry up'")
        if service not in topology.SCALABLE:
            known = ", ".join(topology.SCALABLE)
            raise StackError(f"cannot restart {service!r}: choose one of {known}")
        count = getattr(self.config, topology.SCALABLE[service])
        if count == 0:
            raise StackError(f"{service} runs no process: `telemetry scale {service} N` first")
        surge = count < topology.MAX_PROCESSES
        if surge:
            self.scale(service, count + 1)
        try:
            for index in range(1, count + 1):
                self._roll_one(service, f"{service}-{index}")
        finally:
            if surge:
                self.scale(service, count)

    def _drain(self, service: str, name: str) -> bool:
        """Takes a balanced process out of HAProxy's rotation and waits for its requests
        in flight. True when HAProxy balances it (and it was drained)."""
        if service not in haproxy.BALANCED or not self.running(haproxy.NAME):
            return False
        if not haproxy.has_server(self.config, service, name):
            return False  # a start that failed before HAProxy was told of it
        haproxy.set_server_state(self.config, service, name, "drain")
        # A WebSocket (the notifier's) may last for hours, so the wait is bounded, and the
        # stop closes what is left cleanly.
        drained = wait_until(
            lambda: haproxy.server_stat(self.config, service, name)["scur"] == "0",
            DRAIN_TIMEOUT_S,
            0.1,
        )
        if not drained:
            self.report(f"{name} still had connections after {DRAIN_TIMEOUT_S:.0f} s")
        return True

    def _roll_one(self, service: str, name: str) -> None:
        balanced = self._drain(service, name)
        self.stop(name)
        self.start(name)
        if balanced:
            haproxy.set_server_state(self.config, service, name, "ready")
            # Back in rotation once HAProxy's own check passes (every second).
            if not wait_until(
                lambda: haproxy.server_stat(self.config, service, name)["status"] == "UP",
                30,
                0.1,
            ):
                raise StackError(f"HAProxy does not see {name} up again")
        self.report(f"replaced {name}")

    def start_simulator(self, drivers: int, interval_s: float = 4.0) -> None:
        """A simulated fleet posting to ingest until `down`, logging to simulator.log."""
        if self.running(SIMULATOR):
            self.report("simulator already running")
            return
        self.report(f"starting a simulated fleet of {drivers} drivers")
        argv = [
            sys.executable, "-m", "cli", "simulate", "--plain",
            "--drivers", str(drivers), "--interval", str(interval_s),
            "--duration", str(365 * 24 * 3600),
        ]  # fmt: skip
        ref = spawn(
            argv,
            log_path=self._log(SIMULATOR),
            env={"TELEMETRY_STATE_DIR": str(self.config.state_dir)},
            cwd=REPO_ROOT,
        )
        self.state.put(Record(SIMULATOR, ref, {"drivers": str(drivers)}))

    def _stop(self, names: list[str]) -> None:
        # The supervisor first: it would otherwise see the others go.
        for name in sorted(reversed(names), key=lambda n: n != supervisor.NAME):
            self.stop(name)

    def down(self) -> None:
        self._stop(list(self.records))
        topology.forget(self.config)

    def urls(self, service: str) -> list[str]:
        """The URLs of the running processes of `service` (`ingest` gives ingest-1...)."""
        return [
            r.endpoint["url"]
            for n, r in self.records.items()
            if n.startswith(f"{service}-") and r.ref.alive()
        ]

    def ws_urls(self) -> list[str]:
        """The notifier processes' WebSocket URLs."""
        return [
            r.endpoint["ws"]
            for n, r in self.records.items()
            if n.startswith("notifier-") and r.ref.alive()
        ]

    def public_url(self, key: str = "url") -> str | None:
        """The edge's URL (every route, one port; `ws`: its WebSocket URL), when it runs.
        From the state file: a command run with only the state dir set knows no ports."""
        record = self.records.get(edge.NAME)
        return record.endpoint[key] if record is not None and record.ref.alive() else None

    def _healthy(self, name: str, endpoint: dict[str, str]) -> bool:
        component = self.components.get(name)
        if component is not None:
            return component.ready()
        # A recorded HTTP service beyond the configured count (`up --ingest 3`), or the
        # simulator, which has no endpoint: running is all it can be.
        return services.url_ready(endpoint["url"], name) if "url" in endpoint else True

    def status(self) -> dict[str, dict[str, Any]]:
        """Every expected component, plus any recorded one (`up --ingest 3` adds ingest-3)."""
        records = self.records
        expected = {name: c.endpoint for name, c in self.components.items()}
        names = list(expected) + [n for n in records if n not in expected]
        result: dict[str, dict[str, Any]] = {}
        for name in names:
            record = records.get(name)
            alive = record is not None and record.ref.alive()
            endpoint = record.endpoint if record is not None else expected[name]
            healthy = alive and self._healthy(name, endpoint)
            component = self.components.get(name)
            result[name] = {
                **endpoint,
                **(component.describe() if healthy and component is not None else {}),
                "pid": record.ref.pid if record is not None and alive else None,
                "running": alive,
                "healthy": healthy,
                # The simulator is a guest: the platform does not need it to be healthy.
                "required": name != SIMULATOR,
            }
            if record is not None and record.supervised:
                result[name]["restarts"] = record.restarts
                if record.gave_up:
                    result[name]["gave_up"] = True
        return result


def scratch_config(prefix: str, **overrides: object) -> StackConfig:
    """A stack in a new temporary state dir on free ports, beside any other stack (tests,
    benchmarks that compare configurations). The caller removes the dir."""
    # Under /tmp and world-traversable: the postgres OS user must reach its data dirs.
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)
    # Each base port is followed by ports for `ingest-2`, `streams-2`...: no range may overlap
    # another, or two components would be given the same port.
    names = (
        "kafka_port", "kafka_controller_port", "postgres_primary_port",
        "postgres_replica_port", "pgbouncer_port", "redis_port",
        "ingest_port", "api_port", "streams_web_port", "photo_worker_port", "notifier_port",
        "edge_port", "haproxy_port", "haproxy_stats_port", "prometheus_port",
        "ops_exporter_port", "postgres_node_port", "patroni_port", "etcd_port",
        "etcd_peer_port", "alertmanager_port", "node_exporter_port", "edge_status_port",
        "redis_exporter_port", "nginx_exporter_port", "postgres_exporter_port",
    )  # fmt: skip
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        port = free_port(span=topology.MAX_PROCESSES)
        while taken & set(range(port, port + topology.MAX_PROCESSES)):
            port = free_port(span=topology.MAX_PROCESSES)
        ports[name] = port
        taken |= set(range(port, port + topology.MAX_PROCESSES))
    return StackConfig(state_dir=state, **(ports | overrides))  # type: ignore[arg-type]

"""The `telemetry` command: run the local stack, issue tokens, inspect it."""

import argparse
import json
import logging
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

# Only light parts of bench here: the fleet and the harness pull in aiohttp, HdrHistogram
# and matplotlib, which `telemetry token` or `status` must not pay for.
from bench.routes import CITIES
from bench.scenarios import SCENARIOS
from infra import devices as device_registry
from infra import keys as token_keys
from infra.config import StackConfig
from infra.procs import StackError, wait_until
from infra.topology import SCALABLE
from runtime.auth import issue_token
from schemas.auth import Role

if TYPE_CHECKING:
    from infra.stack import Stack

console = Console(stderr=True)


def _stack(config: StackConfig, report: Any = None) -> "Stack":
    # Imported when needed: `telemetry token` has no use for the stack's machinery.
    from infra.stack import Stack

    return Stack(config, report) if report is not None else Stack(config)


def _config(args: argparse.Namespace) -> StackConfig:
    overrides = {}
    fields = ("ingest_processes", "api_processes", "stream_workers", "notifier_processes")
    for field in (*fields, "kafka_brokers", "postgres_ha"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return StackConfig(**overrides)


def cmd_up(args: argparse.Namespace) -> int:
    config = _config(args)
    with console.status("starting the stack") as status:

        def report(step: str) -> None:
            status.update(step)
            console.log(step)

        stack = _stack(config, report)
        stack.up()
        if args.simulate:
            stack.start_simulator(args.simulate)
    print_endpoints(_stack(config).status())
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    config = StackConfig()
    from infra import install, storage

    packages = install.DEBIAN_PACKAGES | (install.TEST_DEBIAN_PACKAGES if args.test_tools else {})
    installed = install.ensure_debian_packages(packages)
    console.print(
        f"Debian packages: {'installed ' + ' '.join(installed) if installed else 'present'}"
    )
    for step in install.ensure_users(config):
        console.print(step)
    fetched = install.ensure_kafka_jars(config)
    state = "fetched" if fetched else "cached"
    console.print(f"Kafka {config.kafka_version}: {state} in {config.kafka_lib_dir}")
    console.print(f"storage: {storage.prepare(config, lambda step: console.log(step))}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from infra.containers import images

    config = StackConfig()
    built = images.build(
        config, lambda step: console.log(step), tuple(args.names), program=args.engine
    )
    for name in args.names or [image.name for image in images.IMAGES]:
        console.print(images.reference(name))
    console.print(f"built {len(built)}, the others were up to date")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _stack(StackConfig(), lambda step: console.log(step)).down()
    console.print("stack stopped")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    stack = _stack(StackConfig(), lambda step: console.log(step))
    stack.scale(args.service, args.count)
    print_endpoints(stack.status())
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    stack = _stack(StackConfig(), lambda step: console.log(step))
    stack.roll(args.service)
    print_endpoints(stack.status())
    return 0


def cmd_switchover(args: argparse.Namespace) -> int:
    from infra import patroni, topology

    config = topology.recorded(StackConfig())
    if not config.postgres_ha:
        raise StackError(
            "this stack's PostgreSQL is not under Patroni: it was made with --no-postgres-ha"
        )
    console.log(patroni.switchover(config, args.to).strip())
    # The old leader restarts as a replica of the new one: shown once it is.
    with console.status("waiting for the old leader to follow"):
        wait_until(lambda: patroni.replicas(config) != [], config.startup_timeout_s, 0.5)
    print_endpoints(_stack(config).status())
    return 0


def cmd_lag(args: argparse.Namespace) -> int:
    import time

    from infra import kafka
    from runtime import lag_view as lag
    from runtime.lag_status import LagWindow, Status

    stack = _stack(StackConfig())
    # The running brokers' own record: the ports they were started on.
    running = [n for n in kafka.names(stack.config) if stack.running(n)]
    if not running:
        raise StackError("Kafka is not running: start the platform with 'telemetry up'")
    bootstrap = stack.records[running[0]].endpoint["bootstrap"]
    window = LagWindow(args.window)

    def table(rows: list[lag.PartitionRow], members: dict[str, int]) -> Table:
        shown = Table(title="consumer lag (status over the last looks, Burrow's rules)")
        columns = ("group", "members", "topic", "part", "end", "committed", "lag", "lag s")
        for column in (*columns, "status"):
            left = column in ("group", "topic")
            shown.add_column(column, justify="left" if left else "right", no_wrap=True)
        colour = {Status.OK: "green", Status.WARN: "yellow"}
        for r in rows:
            shown.add_row(
                r.group, str(members[r.group]), r.topic, str(r.partition), str(r.end_offset),
                "-" if r.committed_offset is None else str(r.committed_offset),
                str(r.lag_messages), f"{r.lag_seconds:.1f}",
                f"[{colour.get(r.status, 'red')}]{r.status}[/]",
            )  # fmt: skip
        return shown

    def looks() -> "Iterator[tuple[list[lag.PartitionRow], dict[str, int]]]":
        while True:
            seen = lag.take_look(bootstrap)
            yield lag.judge(window, seen), seen.members
            time.sleep(args.interval)  # the pace of the looks the statuses compare

    if args.watch:
        with Live(console=console, refresh_per_second=1) as live:
            for rows, members in looks():
                live.update(table(rows, members))
    # One answer: a window of looks, so the statuses have something to compare.
    stream = looks()
    for _ in range(max(1, args.window)):
        rows, members = next(stream)
    if args.json:
        sys.stdout.write(json.dumps(lag.as_json(rows, members), indent=2) + "\n")
    else:
        Console().print(table(rows, members))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    import time

    config = StackConfig()
    logs = sorted(config.logs_dir.glob(f"{args.service}.log")) or sorted(
        config.logs_dir.glob(f"{args.service}-[0-9]*.log")
    )
    if not logs:
        known = sorted(p.stem for p in config.logs_dir.glob("*.log"))
        raise StackError(
            f"no log for {args.service!r} in {config.logs_dir}; there are: {', '.join(known)}"
        )
    prefix = len(logs) > 1
    offsets = {}
    for path in logs:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()[-args.lines :]
            offsets[path] = f.tell()
        for line in lines:
            print(f"{path.stem}: {line}" if prefix else line)
    while args.follow:
        time.sleep(0.5)  # the poll interval of `-f`
        for path in logs:
            with open(path, "rb") as f:
                f.seek(offsets[path] if path.stat().st_size >= offsets[path] else 0)
                chunk = f.read()
                offsets[path] = f.tell()
            for line in chunk.decode(errors="replace").splitlines():
                print(f"{path.stem}: {line}" if prefix else line, flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    components = _stack(StackConfig()).status()
    if args.json:
        shown = components if args.show_secrets else redact(components)
        sys.stdout.write(json.dumps({"components": shown}, indent=2) + "\n")
    else:
        print_endpoints(components)
    return status_exit_code(components)


def cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from runtime import doctor

    stack = _stack(StackConfig())
    # The stack first: a component down explains most of what the metrics show.
    findings = [
        doctor.Finding(
            "component-down",
            doctor.CRITICAL,
            f"{name} is not healthy",
            f"`telemetry logs {name}`; the supervisor restarts a service that exits, so one "
            "down for long cannot start (a dependency, a port, a setting).",
            {"component": name, "pid": component.get("pid")},
        )
        for name, component in stack.status().items()
        if component.get("required") and not component["healthy"]
    ]
    # The running Prometheus's own record: the port it was started on.
    running = stack.records.get("prometheus")
    url = running.endpoint["url"] if running is not None else stack.config.prometheus_url
    try:
        answers = asyncio.run(doctor.ask(url))
    except doctor.PrometheusUnanswered as exc:
        findings.append(
            doctor.Finding(
                "prometheus-unanswered",
                doctor.CRITICAL,
                "Prometheus does not answer: the metrics cannot be read",
                "`telemetry status` shows whether it runs; `telemetry logs prometheus`.",
                {"error": str(exc)},
            )
        )
    else:
        findings += doctor.diagnose(answers)
    if args.json:
        sys.stdout.write(json.dumps({"findings": [f.as_dict() for f in findings]}, indent=2))
        sys.stdout.write("\n")
    elif not findings:
        console.print("[green]healthy[/]: no known bottleneck in the live metrics")
    else:
        shown = Table(title="telemetry doctor", show_lines=True)
        for column in ("severity", "finding", "evidence", "what to do"):
            shown.add_column(column, overflow="fold")
        for f in findings:
            colour = "red" if f.severity == doctor.CRITICAL else "yellow"
            evidence = ", ".join(f"{k} {v}" for k, v in f.evidence.items())
            shown.add_row(f"[{colour}]{f.severity}[/]", f.summary, evidence, f.advice)
        console.print(shown)
    return doctor.exit_code(findings)


def status_exit_code(components: dict[str, dict[str, Any]]) -> int:
    """1 when a component the platform needs is unhealthy; a stopped simulator is not one."""
    return 0 if all(c["healthy"] for c in components.values() if c.get("required")) else 1


_PASSWORD = re.compile(r"password=\S+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def redact(components: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The status with every DSN's and URL's password replaced by `***`."""

    def hide(value: str) -> str:
        return _URL_PASSWORD.sub(r"\1***@", _PASSWORD.sub("password=***", value))

    return {
        name: {k: hide(v) if isinstance(v, str) else v for k, v in info.items()}
        for name, info in components.items()
    }


def _display(value: object) -> str:
    # The table is for eyes on a terminal: DSNs lose their password altogether.
    return re.sub(r"password=\S+ ?", "", str(value)).strip()


def print_endpoints(components: dict[str, dict[str, object]]) -> None:
    table = Table(title="telemetry stack")
    for column in ("component", "endpoint", "pid", "healthy"):
        table.add_column(column)
    for name, info in components.items():
        if "dsn_read_only" in info:
            endpoint: str = (
                f"rw: {_display(info['dsn_read_write'])}\nro: {_display(info['dsn_read_only'])}"
            )
        elif "drivers" in info:
            endpoint = f"{info['drivers']} simulated drivers"
        elif "ws" in info:  # the notifier's processes, and the edge: both URLs
            endpoint = f"{info['url']}\n{info['ws']}"
        else:
            shown = info.get("url") or info.get("bootstrap") or info.get("dsn") or info.get("api")
            endpoint = _display(shown) if shown else "-"
            if "role" in info:  # a Patroni node
                endpoint += f"\n{info['role']}, timeline {info['timeline']}"
                if "lag_bytes" in info:
                    endpoint += f", {info['lag_bytes']} bytes behind"
            if "metrics" in info:
                endpoint += f"\nmetrics: {info['metrics']}"
            if "storage" in info:
                endpoint += f"\nstorage: {info['storage']}"
        if info.get("gave_up"):
            endpoint += "\n[red]crashed repeatedly: no longer restarted[/red] (telemetry up)"
        elif info.get("restarts"):
            endpoint += f"\nrestarted {info['restarts']} time(s) after a crash"
        healthy = "[green]yes[/green]" if info["healthy"] else "[red]no[/red]"
        table.add_row(name, endpoint, str(info["pid"] or "-"), healthy)
    Console().print(table)


def _targets(stack: "Stack", service: str, direct: bool) -> list[str]:
    """Where clients of `service` go: the edge, the one public port, when it runs (or with
    `direct`, each process's own port)."""
    public = None if direct else stack.public_url()
    urls = [public] if public is not None else stack.urls(service)
    if not urls:
        raise StackError(f"no {service} process is running: start the platform with 'telemetry up'")
    return urls


def cmd_simulate(args: argparse.Namespace) -> int:
    from bench.display import fleet_line, fleet_table
    from bench.fleet import FleetConfig, run_fleet
    from bench.jobs_flow import JobsConfig
    from bench.stats import FleetStats

    config = StackConfig()
    stack = _stack(config)
    fleet = FleetConfig(
        drivers=args.drivers,
        interval_s=args.interval,
        duration_s=args.duration,
        ingest_urls=_targets(stack, "ingest", args.direct),
        private_key_path=config.jwt_private_key,
        city=args.city,
        seed=args.seed,
        processes=args.processes,
        max_requests_per_s=args.rate_limit,
        jobs=(
            JobsConfig(_targets(stack, "api", args.direct), every_s=args.jobs_every)
            if args.jobs_every
            else None
        ),
    )
    # `telemetry down` ends a background simulator with SIGTERM: unwind so that
    # run_fleet stops its load processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.plain:
        last = [0.0]

        def log_line(stats: FleetStats, elapsed: float) -> None:
            if elapsed - last[0] >= 10:
                last[0] = elapsed
                print(fleet_line(stats, elapsed), flush=True)

        stats = run_fleet(fleet, log_line)
        print(fleet_line(stats, args.duration), flush=True)
    else:
        with Live(console=console, refresh_per_second=2) as live:

            def show(stats: FleetStats, elapsed: float) -> None:
                live.update(fleet_table(stats, elapsed, args.drivers))

            stats = run_fleet(fleet, show)
            live.update(fleet_table(stats, args.duration, args.drivers))
    return 0 if stats.failed_batches == 0 and stats.unfinished_slices == 0 else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from bench import harness

    options: dict[str, str] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise StackError(f"--set takes KEY=VALUE, got {item!r}")
        options[key] = value
    stack = _stack(StackConfig(), lambda step: console.log(step))
    # Most scenarios measure the running stack (or one started here); some start their own.
    needs_stack = getattr(harness.load(args.scenario), "NEEDS_STACK", True)
    started_here = needs_stack and not any(r.ref.alive() for r in stack.records.values())
    if started_here:
        stack.up()
    try:
        command = " ".join(["telemetry bench", *sys.argv[2:]])
        report = harness.run(args.scenario, stack, options=options, command=command)
    finally:
        if started_here:
            stack.down()
    for line in harness.load(args.scenario).summary(report):
        console.print(line)
    files = report["files"]
    console.print(f"report: {files['json']}, {files['png']} and {files['summary']}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = StackConfig()
    if not config.jwt_private_key.exists():
        raise StackError(f"no signing key at {config.jwt_private_key}: run 'telemetry up' first")
    sys.stdout.write(
        issue_token(config.jwt_private_key, sub=args.sub, role=Role(args.role), ttl_s=args.ttl)
        + "\n"
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """The token keys (infra/keys.py): list them, rotate the signing key, retire one."""
    config = StackConfig()
    if not config.jwt_private_key.exists():
        raise StackError(f"no signing key at {config.jwt_private_key}: run 'telemetry up' first")
    if args.action == "rotate":
        console.print(
            f"signing with {token_keys.rotate(config)}; the old key verifies until retired"
        )
        return 0
    if args.action == "retire":
        token_keys.retire(config, args.kid)
        console.print(f"retired {args.kid}: tokens it signed are refused from now")
        return 0

    def at(ts: object) -> str:
        if not isinstance(ts, float):
            return "-"
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

    token_keys.ensure(config)
    table = Table(title="token keys")
    table.add_column("kid", no_wrap=True, min_width=43)  # whole: `retire` takes it
    for column in ("made", "role", "signed until", "may retire from"):
        table.add_column(column)
    for row in token_keys.listing(config):
        role = "signs and verifies" if row["signs"] else "verifies"
        signed = at(row["signed_until"])
        table.add_row(
            str(row["kid"]), at(row["created_at"]), role, signed, at(row["retirable_from"])
        )
    console.print(table)
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    """GPS devices on the OsmAnd protocol (infra/devices.py): add, list, remove."""
    config = StackConfig()
    if args.action == "add":
        record = device_registry.add(config, args.device_id, args.driver)
        console.print(f"device {args.device_id} sends fixes for driver {record.driver_id}")
        return 0
    if args.action == "remove":
        if not device_registry.remove(config, args.device_id):
            raise StackError(f"no device {args.device_id!r} (telemetry device list)")
        console.print(f"removed device {args.device_id}: its fixes are refused from now")
        return 0
    table = Table(title="GPS devices (OsmAnd)")
    for column in ("device", "driver", "added"):
        table.add_column(column, no_wrap=True)
    for device_id, record in sorted(device_registry.listing(config).items()):
        added = record.added_at.isoformat(timespec="seconds")
        table.add_row(device_id, record.driver_id, added)
    console.print(table)
    return 0


def cmd_ops_url(args: argparse.Namespace) -> int:
    """The ops page's URL with a short-lived ops token in its fragment (never sent to a
    server, so never in a log); the page keeps it for its tab only."""
    config = StackConfig()
    if not config.jwt_private_key.exists():
        raise StackError(f"no signing key at {config.jwt_private_key}: run 'telemetry up' first")
    stack = _stack(config)
    base = stack.public_url() or next(iter(stack.urls("api")), None)
    if base is None:
        raise StackError("no edge and no api runs: start the stack with 'telemetry up'")
    token = issue_token(config.jwt_private_key, sub=args.sub, role=Role.OPS, ttl_s=args.ttl)
    sys.stdout.write(f"{base}/ops#token={token}\n")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from bench.ws_client import JobWatcher, Refused

    try:
        job_id = uuid.UUID(args.job_id)
    except ValueError as exc:
        raise StackError(f"{args.job_id!r} is not a job id (a UUID)") from exc
    stack = _stack(StackConfig())
    public = stack.public_url("ws")
    urls = [args.url] if args.url else ([public] if public else stack.ws_urls())
    if not urls:
        raise StackError("no notifier is running: start the platform with 'telemetry up'")
    token = args.token
    if token is None:
        config = StackConfig()
        if not config.jwt_private_key.exists():
            raise StackError("no --token and no signing key: run 'telemetry up' first")
        # A dispatcher sees every job: the operator's view.
        token = issue_token(config.jwt_private_key, sub="telemetry-watch", role=Role.DISPATCHER)
    watcher = JobWatcher(urls, token, job_id, last_seq=args.last_seq)
    out = Console(highlight=False)

    async def run() -> None:
        connects = 0
        async for message in watcher.messages():
            if watcher.tally.connects != connects:
                connects = watcher.tally.connects
                if connects > 1:
                    out.print(f"[yellow]reconnected, resuming after seq {watcher.last_seq}[/]")
            out.print(describe_message(message))

    try:
        asyncio.run(run())
    except Refused as exc:
        console.print(f"[bold red]refused:[/bold red] {exc}")
        return 1
    return 0


def describe_message(m: dict[str, Any]) -> str:
    """One line per notifier message, for people."""
    kind = m.get("type", "?")
    if kind == "snapshot":
        job = m["job"]
        where = m.get("position")
        at = f", driver at {where['lat']:.5f},{where['lon']:.5f}" if where else ""
        resumed = f", resuming after seq {m['resumed_from']}" if m.get("resumed_from") else ""
        return f"[bold]snapshot[/] seq {m['seq']}: {job['status']}{at}{resumed}"
    if kind == "position":
        return f"[dim]position {m['lat']:.5f},{m['lon']:.5f} at {m['ts']}[/]"
    if kind == "resync":
        return f"[yellow]resync ({m['reason']}): a fresh snapshot follows[/]"
    if kind == "ping":
        return f"[dim]ping {m['ts']}[/]"
    if "seq" in m:
        data = f" {json.dumps(m['data'])}" if m.get("data") else ""
        return f"seq {m['seq']} [bold]{kind}[/] {m['status']} at {m['at']}{data}"
    return json.dumps(m)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemetry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _stack_commands(sub)
    _tool_commands(sub)
    return parser


def _stack_commands(sub: Any) -> None:
    """Running the stack: up, install, down, images, scale, lag, logs, status."""
    up = sub.add_parser("up", help="install what is missing and start the whole stack")
    up.add_argument("--ingest", dest="ingest_processes", type=int, help="ingest processes")
    up.add_argument("--api", dest="api_processes", type=int, help="api processes")
    up.add_argument("--workers", dest="stream_workers", type=int, help="Faust worker processes")
    up.add_argument(
        "--notifier", dest="notifier_processes", type=int, help="notifier (WebSocket) processes"
    )
    up.add_argument(
        "--kafka", dest="kafka_brokers", type=int, choices=(1, 3, 4, 5),
        help="Kafka brokers: 1, or a cluster of 3 (fixed when the stack is made; docs/ha.md)",
    )  # fmt: skip
    up.add_argument(
        "--postgres-ha", dest="postgres_ha", action=argparse.BooleanOptionalAction,
        default=None,
        help="PostgreSQL as two nodes under Patroni and etcd, failing over by itself (the "
        "default), or with --no-postgres-ha a primary and an asynchronous replica that "
        "nothing promotes (lighter; fixed when the stack is made; docs/ha.md)",
    )  # fmt: skip
    up.add_argument(
        "--simulate", type=int, metavar="DRIVERS", default=0,
        help="also run a simulated fleet of DRIVERS drivers until `down`",
    )  # fmt: skip
    up.set_defaults(func=cmd_up)

    install = sub.add_parser(
        "install",
        help="install the Debian packages, Kafka's jars and TimescaleDB (built once per machine)",
    )
    install.add_argument(
        "--test-tools", action="store_true", help="and what the tests need (Chromium)"
    )
    install.set_defaults(func=cmd_install)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)

    images = sub.add_parser(
        "images",
        help="build the container images (infra/containers/) that are not built yet",
    )
    images.add_argument("names", nargs="*", help="only these (kafka, postgres, app...)")
    images.add_argument(
        "--engine", choices=("podman", "docker"), default="podman", help="what builds them"
    )
    images.set_defaults(func=cmd_images)

    scale = sub.add_parser(
        "scale",
        help="run N processes of a service in the running stack (HAProxy follows, no "
        "connection dropped)",
    )
    scale.add_argument("service", choices=sorted(SCALABLE))
    scale.add_argument("count", type=int)
    scale.set_defaults(func=cmd_scale)

    restart = sub.add_parser(
        "restart",
        help="replace a service's processes one by one without failing a request (one "
        "more first; each drained in HAProxy, stopped gracefully, started, ready)",
    )
    restart.add_argument("service", choices=sorted(SCALABLE))
    restart.set_defaults(func=cmd_restart)

    lag = sub.add_parser(
        "lag", help="consumer lag per group and partition, with a status (OK, WARN, STALL, STOP)"
    )
    lag.add_argument("--watch", action="store_true", help="a live table until Ctrl-C")
    lag.add_argument("--json", action="store_true", help="machine-readable output")
    lag.add_argument(
        "--window", type=int, default=5, help="looks a status is judged over (default 5)"
    )
    lag.add_argument("--interval", type=float, default=1.0, help="seconds between looks")
    lag.set_defaults(func=cmd_lag)

    logs = sub.add_parser("logs", help="a component's log (api: every api-N's)")
    logs.add_argument("service", help="a component (api-2, kafka) or a service (api)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show first")
    logs.set_defaults(func=cmd_logs)

    switch = sub.add_parser(
        "switchover",
        help="move PostgreSQL's leadership to the other node on purpose (under Patroni)",
    )
    switch.add_argument("--to", type=int, choices=(1, 2), help="the node to lead (postgres-N)")
    switch.set_defaults(func=cmd_switchover)

    status = sub.add_parser("status", help="each component's endpoint, pid and health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--show-secrets", action="store_true", help="keep passwords in the JSON DSNs"
    )
    status.set_defaults(func=cmd_status)


def _tool_commands(sub: Any) -> None:
    """Using it: doctor, simulate, bench, token, ops-url, watch."""
    doctor = sub.add_parser(
        "doctor",
        help="name the bottleneck from the stack and its live metrics, with evidence and "
        "advice (exit 0 healthy, 1 warnings, 2 critical)",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)

    sim = sub.add_parser("simulate", help="drive a simulated fleet against the running ingest")
    sim.add_argument("--drivers", type=int, default=100)
    sim.add_argument("--interval", type=float, default=4.0, help="seconds between fixes")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    sim.add_argument("--rate-limit", type=float, default=None, help="cap on requests/s")
    sim.add_argument("--processes", type=int, default=1, help="load generator processes")
    sim.add_argument("--city", choices=sorted(CITIES), default="bengaluru")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--plain", action="store_true", help="log lines instead of a live table")
    sim.add_argument(
        "--direct", action="store_true",
        help="post to each ingest and api process's own port rather than through the edge",
    )  # fmt: skip
    sim.add_argument(
        "--jobs-every", type=float, default=15.0, metavar="SECONDS",
        help="customers order a delivery about this often (0: pings only)",
    )  # fmt: skip
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="run a benchmark scenario, write JSON and PNG reports")
    bench.add_argument("scenario", choices=SCENARIOS)
    bench.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario option")
    bench.set_defaults(func=cmd_bench)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="the driver/customer/dispatcher/ops id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    keys = sub.add_parser("keys", help="the token keys: list, rotate, retire KID")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("list", help="each key, whether it signs, when it may retire")
    key_actions.add_parser("rotate", help="sign with a new key; the old one still verifies")
    retire = key_actions.add_parser("retire", help="stop verifying with an old key")
    retire.add_argument("kid")
    keys.set_defaults(func=cmd_keys)

    device = sub.add_parser("device", help="GPS devices on the OsmAnd protocol: add, list, remove")
    device_actions = device.add_subparsers(dest="action", required=True)
    add = device_actions.add_parser("add", help="register a device to a driver")
    add.add_argument("device_id", help="the id the device sends (Traccar Client's identifier)")
    add.add_argument("--driver", required=True, help="the driver whose fixes it sends")
    device_actions.add_parser("list", help="every registered device and its driver")
    remove = device_actions.add_parser("remove", help="unregister a device")
    remove.add_argument("device_id")
    device.set_defaults(func=cmd_device)

    ops_url = sub.add_parser(
        "ops-url", help="print the ops page's URL, logged in with a short-lived ops token"
    )
    ops_url.add_argument("--sub", default="ops", help="who the token names (default: ops)")
    ops_url.add_argument("--ttl", type=int, default=900, help="its lifetime in seconds")
    ops_url.set_defaults(func=cmd_ops_url)

    watch = sub.add_parser(
        "watch", help="follow a job through the notifier: its snapshot, events and positions"
    )
    watch.add_argument("job_id")
    watch.add_argument(
        "--token", help="a user's JWT or a share token (default: a dispatcher's, minted here)"
    )
    watch.add_argument("--url", help="the WebSocket URL (default: the stack's edge, ws://…/ws)")
    watch.add_argument("--last-seq", type=int, help="resume after this seq")
    watch.set_defaults(func=cmd_watch)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The readiness probes expect refused connections while servers start: keep the
    # Kafka client's retry chatter out of the operator's terminal.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        code: int = args.func(args)
    except StackError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        return 1
    except ValidationError as exc:  # a setting from the environment out of its range
        console.print(f"[bold red]error:[/bold red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The `telemetry` command: run the local stack, issue tokens, inspect it."""

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from infra import install
from infra.config import StackConfig
from infra.procs import StackError
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role

console = Console(stderr=True)


def _config(args: argparse.Namespace) -> StackConfig:
    overrides = {}
    for field in ("ingest_processes", "api_processes", "stream_workers"):
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

        Stack(config, report).up()
    print_endpoints(Stack(config).status())
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    config = StackConfig()
    installed = install.ensure_debian_packages()
    console.print(
        f"Debian packages: {'installed ' + ' '.join(installed) if installed else 'present'}"
    )
    fetched = install.ensure_kafka_jars(config)
    state = "fetched" if fetched else "cached"
    console.print(f"Kafka {config.kafka_version}: {state} in {config.kafka_lib_dir}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    Stack(StackConfig(), lambda step: console.log(step)).down()
    console.print("stack stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    components = Stack(StackConfig()).status()
    if args.json:
        sys.stdout.write(json.dumps({"components": components}, indent=2) + "\n")
    else:
        print_endpoints(components)
    return 0 if all(c["healthy"] for c in components.values()) else 1


def _display(value: object) -> str:
    # The table is for eyes on a terminal: DSNs lose their password (status --json keeps it).
    return re.sub(r"password=\S+ ?", "", str(value)).strip()


def print_endpoints(components: dict[str, dict[str, object]]) -> None:
    table = Table(title="telemetry stack")
    for column in ("component", "endpoint", "pid", "healthy"):
        table.add_column(column)
    for name, info in components.items():
        if "dsn_read_only" in info:
            endpoint = (
                f"rw: {_display(info['dsn_read_write'])}\nro: {_display(info['dsn_read_only'])}"
            )
        else:
            endpoint = _display(info.get("url") or info.get("bootstrap") or info.get("dsn"))
        healthy = "[green]yes[/green]" if info["healthy"] else "[red]no[/red]"
        table.add_row(name, endpoint, str(info["pid"] or "-"), healthy)
    Console().print(table)


def cmd_token(args: argparse.Namespace) -> int:
    config = StackConfig()
    if not config.jwt_private_key.exists():
        raise StackError(f"no signing key at {config.jwt_private_key}: run 'telemetry up' first")
    sys.stdout.write(
        issue_token(config.jwt_private_key, sub=args.sub, role=Role(args.role), ttl_s=args.ttl)
        + "\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemetry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="install what is missing and start the whole stack")
    up.add_argument("--ingest", dest="ingest_processes", type=int, help="ingest processes")
    up.add_argument("--api", dest="api_processes", type=int, help="api processes")
    up.add_argument("--workers", dest="stream_workers", type=int, help="Faust worker processes")
    up.set_defaults(func=cmd_up)

    sub.add_parser("install", help="install the Debian packages and Kafka's jars").set_defaults(
        func=cmd_install
    )
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="each component's endpoint, pid and health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="the driver/customer/dispatcher/ops id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)
    return parser


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
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

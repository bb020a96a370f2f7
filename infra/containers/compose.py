"""The stack on `docker compose` (or Podman's compose): `compose.yaml`, beside this file, runs
the components of `telemetry up`'s default topology from the same images, on the same ports
(host networking), with the state dir in one volume: etcd, PostgreSQL under Patroni and
HAProxy on Patroni's checks among them. `compose-plain.yaml` runs `up --no-postgres-ha`'s
(a primary and a replica instead). They are generated from the component registry
(`python -m infra.containers.compose yaml`; a test fails when one is stale), so they
cannot drift from what `up` runs.

Two one-shot services of the app image do what `up` does around the processes:

- `config` writes what `up` writes before it starts anything: the keys, the password, every
  configuration file, and for each component the script its container runs
  (`<state>/compose/<name>.sh`): the component's own command, after the first-run step that
  needs the component's binaries (initdb, pg_basebackup, Kafka's storage format) and the
  check the stack makes of a configuration (nginx -t, haproxy -c, promtool).
- `bootstrap`, once Kafka and the primary (under Patroni: a leader behind HAProxy) answer:
  the roles, the database, the migrations and the topics (the components' own `on_ready`
  steps).

Compose's restart policy stands in for the supervisor."""

import argparse
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from infra import (
    alertmanager,
    edge,
    etcd,
    exporters,
    haproxy,
    haproxy_db,
    kafka,
    keys,
    patroni,
    pgbouncer,
    postgres,
    prometheus,
    redis,
    services,
    storage,
)
from infra import supervisor as supervisor_module
from infra.components import Component, components
from infra.config import StackConfig
from infra.containers import engine, images
from infra.containers.run import in_image
from infra.launch import Command
from infra.procs import (
    APP_USER,
    DATABASE_USER,
    HAPROXY_USER,
    PROMETHEUS_USER,
    StackError,
    chown_for,
    own_tree,
    wait_until,
    write_private,
)

STATE_DIR = Path("/var/lib/telemetry")
SCRIPTS = STATE_DIR / "compose"  # scripts_dir(stack_config())
VOLUME = "telemetry-state"
COMPOSE_FILE = Path(__file__).resolve().parent / "compose.yaml"
PLAIN_COMPOSE_FILE = COMPOSE_FILE.with_name("compose-plain.yaml")
# What compose runs instead of these: its restart policy, and the engine itself.
NOT_IN_COMPOSE = (supervisor_module.NAME, engine.NAME)


def stack_config(postgres_ha: bool = True) -> StackConfig:
    """The default topology and ports, TimescaleDB (the postgres image has it)."""
    return StackConfig(
        state_dir=STATE_DIR, storage="timescaledb", runtime="containers", postgres_ha=postgres_ha
    )


def bootstrapped(config: StackConfig) -> tuple[str, str]:
    """The components whose `on_ready` steps the bootstrap runs: Kafka's topics, and the
    roles and migrations once the primary (under Patroni, HAProxy's leader) answers."""
    return ("kafka", haproxy_db.NAME if config.postgres_ha else "postgres-primary")


def _report(step: str) -> None:
    print(step, flush=True)


def _components(config: StackConfig) -> list[Component]:
    return [c for c in components(config, _report) if c.name not in NOT_IN_COMPOSE]


def scripts_dir(config: StackConfig) -> Path:
    return config.state_dir / "compose"


def _first_run(config: StackConfig, name: str) -> list[str]:
    """The shell lines a component's container runs before its command."""
    sh = shlex.join
    if name == "kafka":
        format_argv = kafka.format_command(config, kafka.cluster_id(config))
        return [
            f"test -f {kafka.data_dir(config) / 'meta.properties'} || "
            + sh([in_image(config, a) for a in format_argv])
        ]
    if name == "postgres-primary":
        data = postgres.data_dir(config, "primary")
        return [
            f"if [ ! -s {data / 'PG_VERSION'} ]; then",
            "  " + sh(postgres.initdb_command(config)),
            f"  cat {scripts_dir(config) / 'primary.conf'} >> {data / 'postgresql.conf'}",
            f"  cp {scripts_dir(config) / 'pg_hba.conf'} {data / 'pg_hba.conf'}",
            "fi",
        ]
    if name == "postgres-replica":
        data = postgres.data_dir(config, "replica")
        password_file = postgres.pg_root(config) / "password"
        return [
            f"if [ ! -s {data / 'PG_VERSION'} ]; then",
            f'  PGPASSWORD="$(cat {password_file})" ' + sh(postgres.basebackup_command(config)),
            "fi",
        ]
    if name == haproxy.NAME:
        return [sh(haproxy.check_command(haproxy.config_path(config)))]
    if name == haproxy_db.NAME:
        return [sh(haproxy.check_command(haproxy_db.config_path(config)))]
    if name == edge.NAME:
        return [sh(edge.check_command(edge.config_path(config)))]
    if name == prometheus.NAME:
        return [sh(prometheus.check_command(prometheus.config_path(config)))]
    if name == alertmanager.NAME:
        return [sh(alertmanager.check_command(alertmanager.config_path(config)))]
    return []


def script(config: StackConfig, name: str, command: Command) -> str:
    lines = ["#!/bin/sh", "# Written by `python -m infra.containers.compose config`.", "set -e"]
    lines += [f"export {k}={shlex.quote(in_image(config, v))}" for k, v in command.env.items()]
    if command.cwd is not None:
        lines.append(f"cd {shlex.quote(in_image(config, str(command.cwd)))}")
    lines += _first_run(config, name)
    lines.append("exec " + shlex.join(in_image(config, arg) for arg in command.argv))
    return "\n".join(lines) + "\n"


def write_config(config: StackConfig) -> None:
    """Everything the components' containers read, written into the state volume; what
    exists already (keys, the password, a cluster) is kept."""
    for path in (config.state_dir, config.logs_dir, config.run_dir, config.jwt_private_key.parent):
        path.mkdir(parents=True, exist_ok=True)
    keys.ensure(config)
    storage.prepare(config, _report, ensure=lambda _c, _r: None)
    directory = scripts_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    if config.postgres_ha:
        etcd.prepare(config)
        for node in postgres.ha_nodes():
            patroni.prepare(config, node, timescaledb=True)
        # Checked in its container (haproxy -c), as the edge's is.
        haproxy_db.conf_dir(config).mkdir(parents=True, exist_ok=True)
        haproxy_db.config_path(config).write_text(haproxy_db.render(config))
    else:
        postgres.prepare_for_initdb(config)
        (directory / "primary.conf").write_text(postgres.PRIMARY_CONF)
        (directory / "pg_hba.conf").write_text(postgres.PRIMARY_HBA)
        # The replica's container reads it for pg_basebackup, as the postgres user.
        chown_for(postgres.pg_root(config) / "password", DATABASE_USER)
    kafka.write_properties(config)
    redis.prepare(config)
    pgbouncer.write_config(config)
    haproxy.write_errors(config)
    haproxy.config_path(config).write_text(haproxy.render(config, haproxy.topology(config)))
    edge.write(config)
    prometheus.write_rules(config)
    prometheus.config_path(config).write_text(
        prometheus.render(config, prometheus.scrape_jobs(config))
    )
    alertmanager.conf_dir(config).mkdir(parents=True, exist_ok=True)
    alertmanager.config_path(config).write_text(alertmanager.render(config))
    exporters.write_queries(config)
    # What each component writes, its user's (the images give the users fixed uids).
    for path in (*services.writable_dirs(config), kafka.data_dir(config)):
        own_tree(path, APP_USER)
    own_tree(haproxy.sockets_dir(config), HAPROXY_USER)
    own_tree(prometheus.data_dir(config), PROMETHEUS_USER)
    own_tree(alertmanager.data_dir(config), PROMETHEUS_USER)
    write_private(supervisor_module.config_path(config), config.model_dump_json())
    chown_for(supervisor_module.config_path(config), APP_USER)
    for component in _components(config):
        command = _command(config, component)
        path = directory / f"{component.name}.sh"
        # Our services' scripts hold the database password.
        write_private(path, script(config, component.name, command))
        if command.user is not None:
            chown_for(path, command.user)
        print(f"wrote {path}", flush=True)


def bootstrap(config: StackConfig) -> None:
    """What `up` does once Kafka and the primary are ready: topics, roles, migrations."""
    by_name = {c.name: c for c in _components(config)}
    for name in bootstrapped(config):
        component = by_name[name]
        check = component.startup_ready or component.ready
        if not wait_until(check, config.startup_timeout_s, 1.0):
            raise StackError(f"{name} not ready after {config.startup_timeout_s:.0f} s")
        component.on_ready()
    print("bootstrapped: topics, roles, database, migrations", flush=True)


# --- the compose file, generated -------------------------------------------------------
def _command(config: StackConfig, component: Component) -> Command:
    if component.name in ("postgres-primary", "postgres-replica"):
        # The registry asks the cluster which storage it has; on compose it is made later,
        # in the container, always on TimescaleDB.
        role = component.name.removeprefix("postgres-")
        return postgres.command(config, role, timescaledb=True)
    return component.command()


def _upstream(by_name: dict[str, Component], names: tuple[str, ...]) -> set[str]:
    """`names` and every component they start after, transitively."""
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in found and name in by_name:
            found.add(name)
            pending.extend(by_name[name].after)
    return found


def _healthcheck(component: Component, command: Command) -> dict[str, Any]:
    if command.image == "app":
        # Our services answer /readyz when their dependencies do; the ops exporter has
        # only its metrics.
        url = component.endpoint.get("url", "").removesuffix("/") + "/readyz"
        url = url if "url" in component.endpoint else component.endpoint["metrics"]
        probe = "import sys, httpx; sys.exit(httpx.get(sys.argv[1], timeout=2).status_code != 200)"
        test = ["CMD", "python", "-c", probe, url]
    else:
        # The port answers (every image has bash, not every one a client).
        test = ["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{component.ports[0][0]}"]
    return {"test": test, "interval": "5s", "timeout": "5s", "retries": 60, "start_period": "10s"}


def _service(image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "image": f"{images.REPOSITORY}/{image}:latest",
        "network_mode": "host",
        "volumes": [f"{VOLUME}:{STATE_DIR}"],
        "command": command,
        **extra,
    }


def compose_document(config: StackConfig) -> dict[str, Any]:
    def done() -> dict[str, str]:
        return {"condition": "service_completed_successfully"}

    steps = ["python", "-m", "infra.containers.compose"]
    layout = [] if config.postgres_ha else ["--no-postgres-ha"]
    listed = _components(config)
    # What the bootstrap needs running cannot wait for it.
    before_bootstrap = _upstream({c.name: c for c in listed}, bootstrapped(config))
    services: dict[str, Any] = {
        "config": _service("app", [*steps, "config", *layout], restart="no"),
        # It waits for Kafka and the primary itself: health checks need not run.
        "bootstrap": _service(
            "app",
            [*steps, "bootstrap", *layout],
            restart="on-failure",
            depends_on={"config": done()}
            | {name: {"condition": "service_started"} for name in bootstrapped(config)},
        ),
    }
    for component in listed:
        command = _command(config, component)
        assert command.image is not None
        depends: dict[str, Any] = {"config": done()}
        needs = [d for d in component.after if d not in NOT_IN_COMPOSE]
        depends |= {name: {"condition": "service_healthy"} for name in needs}
        if needs and component.name not in before_bootstrap:
            depends["bootstrap"] = done()  # `up` bootstraps before anything that needs it
        services[component.name] = _service(
            command.image,
            ["sh", str(SCRIPTS / f"{component.name}.sh")],
            restart="unless-stopped",
            depends_on=depends,
            healthcheck=_healthcheck(component, command),
            stop_signal=signal.Signals(component.stop_signal).name,
            **({"user": command.user} if command.user is not None else {}),
        )
    return {"name": "telemetry", "services": services, "volumes": {VOLUME: {}}}


def render_compose(config: StackConfig) -> str:
    import yaml  # a dev dependency: the file is generated on a developer's machine

    layout = "" if config.postgres_ha else " `up --no-postgres-ha`'s layout;"
    header = (
        "# Generated by `python -m infra.containers.compose yaml` from the component registry\n"
        f"# (infra/components.py):{layout} edit that, not this. docs/containers.md says how\n"
        "# to run it.\n"
    )
    return header + yaml.safe_dump(
        compose_document(config), sort_keys=False, width=100, default_flow_style=None
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.containers.compose")
    parser.add_argument("step", choices=("config", "bootstrap", "yaml"))
    parser.add_argument(
        "--postgres-ha",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL under Patroni (the default), or a primary and a replica",
    )
    args = parser.parse_args(argv)
    config = stack_config(args.postgres_ha)
    if args.step == "config":
        write_config(config)
    elif args.step == "bootstrap":
        bootstrap(config)
    else:
        for path, ha in ((COMPOSE_FILE, True), (PLAIN_COMPOSE_FILE, False)):
            # The file names no path of the state dir but SCRIPTS and the volume's: a
            # scratch one is written to (passwords) while the registry is read.
            with tempfile.TemporaryDirectory() as scratch:
                text = render_compose(
                    stack_config(ha).model_copy(update={"state_dir": Path(scratch)})
                )
            path.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

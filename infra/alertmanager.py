"""Alertmanager (Debian's prometheus-alertmanager), started by the stack: Prometheus sends it
the alerts its rules fire (infra/alerts/rules.yml), and it routes them by severity to a
webhook each (the settings' URLs: a pager's for `critical`, a chat's or a ticket queue's
for `warning`), groups and repeats them, and keeps the silences an operator sets. The ops
page shows what it holds (docs/ops.md)."""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson

from infra.config import StackConfig
from infra.install import ensure_debian_packages
from infra.launch import Command, Mount
from infra.procs import PROMETHEUS_USER, StackError, own_tree, run

NAME = "alertmanager"
BINARY = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"
PACKAGE = {"prometheus-alertmanager": Path(BINARY)}


def url(config: StackConfig) -> str:
    return config.alertmanager_url


def conf_dir(config: StackConfig) -> Path:
    return config.run_dir / "alertmanager.d"


def config_path(config: StackConfig) -> Path:
    return conf_dir(config) / "alertmanager.yml"


def data_dir(config: StackConfig) -> Path:
    """Its silences and notification log, kept across restarts."""
    return config.state_dir / "alertmanager"


def _receiver(name: str, webhook: str | None) -> dict[str, Any]:
    # No URL: the alerts are kept (the ops page, amtool) and sent nowhere.
    if webhook is None:
        return {"name": name}
    return {"name": name, "webhook_configs": [{"url": webhook, "send_resolved": True}]}


def render(config: StackConfig) -> str:
    """The configuration, a pure function of the settings (JSON is YAML)."""
    page = config.alert_page_webhook_url or config.alert_webhook_url
    document = {
        "route": {
            "receiver": "warning",
            # One notification per rule and what it is about (a group, a process...).
            "group_by": ["alertname", "group", "topic", "partition", "job", "process"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                # Wakes someone: sent sooner, repeated hourly while it fires.
                {
                    "matchers": ['severity="critical"'],
                    "receiver": "critical",
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                },
                {"matchers": ['severity="warning"'], "receiver": "warning"},
            ],
        },
        # A group far behind is told once, as critical, not also as a warning.
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="ConsumerLagCritical"'],
                "target_matchers": ['alertname="ConsumerLagHigh"'],
                "equal": ["group"],
            }
        ],
        "receivers": [
            _receiver("critical", page),
            _receiver("warning", config.alert_webhook_url),
        ],
    }
    header = b"# Written by the stack (infra/alertmanager.py) from its settings: edits are lost.\n"
    return (header + orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n").decode()


def amtool() -> str:
    found = shutil.which("amtool") or (AMTOOL if Path(AMTOOL).exists() else None)
    if found is None:
        raise StackError(
            "Alertmanager is missing: install it with 'apt-get install prometheus-alertmanager'"
        )
    return found


def check_command(path: Path, program: str = AMTOOL) -> list[str]:
    """amtool's check of a configuration (the stack's, compose's first run, `make lint`)."""
    return [program, "check-config", str(path)]


def prepare(config: StackConfig) -> None:
    conf_dir(config).mkdir(parents=True, exist_ok=True)
    candidate = config_path(config).with_suffix(".new.yml")
    candidate.write_text(render(config))
    run(check_command(candidate, amtool()))
    candidate.replace(config_path(config))
    own_tree(data_dir(config), PROMETHEUS_USER)


def command(config: StackConfig) -> Command:
    return Command(
        NAME,
        "alertmanager",
        [
            BINARY,
            f"--config.file={config_path(config)}",
            f"--storage.path={data_dir(config)}",
            f"--web.listen-address=127.0.0.1:{config.alertmanager_port}",
            # One Alertmanager: no gossip with peers (docs/ops.md shows a cluster of them).
            "--cluster.listen-address=",
            "--log.format=json",
        ],
        user=PROMETHEUS_USER,
        mounts=(Mount(conf_dir(config)), Mount(data_dir(config), writable=True)),
    )


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + "/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.alertmanager check`: amtool checks the configuration the stack
    writes, with a webhook for each severity (`make lint`)."""
    parser = argparse.ArgumentParser(prog="python -m infra.alertmanager")
    parser.add_argument("step", choices=("check",))
    parser.parse_args(argv)
    ensure_debian_packages(PACKAGE)
    with tempfile.TemporaryDirectory() as scratch:
        sample = StackConfig(
            state_dir=Path(scratch),
            alert_webhook_url="http://127.0.0.1:9/warning",
            alert_page_webhook_url="http://127.0.0.1:9/critical",
        )
        for each in (sample, StackConfig(state_dir=Path(scratch))):
            path = Path(scratch) / "alertmanager.yml"
            path.write_text(render(each))
            print(run(check_command(path, amtool())).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

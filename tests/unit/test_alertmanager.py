"""Alertmanager's configuration as the stack writes it: critical and warning alerts routed
to their own webhooks (the pager's falling back to the other), resolutions sent, nothing
sent where no URL is set, amtool's check passed; and Prometheus sending to it."""

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from infra import alertmanager, components, exporters, node_exporter, prometheus
from infra.config import StackConfig


def rendered(config: StackConfig) -> dict[str, Any]:
    text = alertmanager.render(config)
    assert text.startswith("# Written by the stack")
    document: dict[str, Any] = orjson.loads(text.split("\n", 1)[1])
    return document


def webhooks(document: dict[str, Any]) -> dict[str, list[str]]:
    return {
        r["name"]: [hook["url"] for hook in r.get("webhook_configs", [])]
        for r in document["receivers"]
    }


def test_each_severity_has_its_route_and_webhook(tmp_path: Path) -> None:
    config = StackConfig(
        state_dir=tmp_path,
        alert_webhook_url="https://chat.example/hook",
        alert_page_webhook_url="https://pager.example/hook",
    )
    document = rendered(config)
    routes = {tuple(r["matchers"]): r for r in document["route"]["routes"]}
    assert routes[('severity="critical"',)]["receiver"] == "critical"
    assert routes[('severity="warning"',)]["receiver"] == "warning"
    # Critical is told sooner and again more often.
    assert routes[('severity="critical"',)]["group_wait"] == "10s"
    assert routes[('severity="critical"',)]["repeat_interval"] == "1h"
    assert webhooks(document) == {
        "critical": ["https://pager.example/hook"],
        "warning": ["https://chat.example/hook"],
    }
    for receiver in document["receivers"]:
        assert all(hook["send_resolved"] for hook in receiver["webhook_configs"])
    # A group far behind is one critical alert, not also a warning.
    [inhibit] = document["inhibit_rules"]
    assert inhibit["equal"] == ["group"]


def test_critical_falls_back_to_the_one_webhook_and_none_sends_nowhere(tmp_path: Path) -> None:
    one = StackConfig(state_dir=tmp_path, alert_webhook_url="https://chat.example/hook")
    assert webhooks(rendered(one)) == {
        "critical": ["https://chat.example/hook"],
        "warning": ["https://chat.example/hook"],
    }
    assert webhooks(rendered(StackConfig(state_dir=tmp_path))) == {"critical": [], "warning": []}


def test_amtool_accepts_the_configuration(tmp_path: Path) -> None:
    for config in (
        StackConfig(state_dir=tmp_path, alert_webhook_url="https://chat.example/hook"),
        StackConfig(state_dir=tmp_path),
    ):
        path = tmp_path / "alertmanager.yml"
        path.write_text(alertmanager.render(config))
        subprocess.run(alertmanager.check_command(path), check=True, capture_output=True)


def test_prometheus_sends_to_alertmanager_and_scrapes_it(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, alertmanager_port=31900)
    document = orjson.loads(
        prometheus.render(config, prometheus.scrape_jobs(config)).split("\n", 1)[1]
    )
    [target] = document["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "127.0.0.1:31900"
    jobs = {job["job_name"] for job in document["scrape_configs"]}
    assert prometheus.ALERTMANAGER_JOB in jobs
    listed = {c.name: c for c in components.components(config, lambda _: None)}
    assert alertmanager.NAME in listed[prometheus.NAME].after
    assert listed[alertmanager.NAME].supervised
    assert listed[alertmanager.NAME].command().image == "alertmanager"


def test_the_node_exporter_is_scraped_and_reads_what_the_rules_need(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, node_exporter_port=31901)
    assert prometheus.scrape_jobs(config)[prometheus.NODE_JOB] == [
        (node_exporter.NAME, "127.0.0.1:31901")
    ]
    command = node_exporter.command(config)
    assert "--collector.filesystem" in command.argv and "--collector.meminfo" in command.argv
    # In a container it sees the state dir's disk through this mount, read-only.
    (mount,) = command.mounts
    assert mount.path == node_exporter.disk_probe_dir(config) and not mount.writable
    listed = {c.name: c for c in components.components(config, lambda _: None)}
    assert listed[node_exporter.NAME].supervised
    assert node_exporter.NAME in listed[prometheus.NAME].after


@pytest.mark.parametrize("postgres_ha", [True, False])
def test_every_postgresql_server_redis_and_nginx_have_their_exporter(
    tmp_path: Path, postgres_ha: bool
) -> None:
    config = StackConfig(state_dir=tmp_path, postgres_ha=postgres_ha)
    listed = {c.name: c for c in components.components(config, lambda _: None)}
    servers = (
        ["postgres-1", "postgres-2"] if postgres_ha else ["postgres-primary", "postgres-replica"]
    )
    assert [name for name, _, _ in exporters.postgres_servers(config)] == servers
    for server, sockets, port in exporters.postgres_servers(config):
        exporter = listed[f"{server}-exporter"]
        assert exporter.after == (server,) and exporter.supervised
        command = exporter.command()
        # The server's own socket (its name carries the port), as postgres: no password.
        assert command.mounts[0].path == sockets
        assert f"host={sockets} port={port} user=postgres" in command.env["DATA_SOURCE_NAME"]
    ports = {port for _, _, port in exporters.postgres_servers(config)}
    expected = (
        {config.postgres_node_port, config.postgres_node_port + 1}
        if postgres_ha
        else {config.postgres_primary_port, config.postgres_replica_port}
    )
    assert ports == expected
    redis_exporter = listed["redis-exporter"].command()
    password = (tmp_path / "redis" / "password").read_text().strip()
    assert redis_exporter.env == {"REDIS_PASSWORD": password}
    assert not any(password in arg for arg in redis_exporter.argv)  # not listable by ps
    jobs = prometheus.scrape_jobs(config)
    assert {name for name, _ in jobs["postgres"]} == {f"{s}-exporter" for s in servers}
    assert [name for name, _ in jobs["redis"]] == ["redis-exporter"]
    assert [name for name, _ in jobs["nginx"]] == ["nginx-exporter"]

"""Alertmanager as the stack runs it: it routes each alert by severity to its own webhook
(the pager's for critical, the other for warnings); the session stack's
Prometheus sends to it; and the ops overview shows what it holds, silences included."""

import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from infra import alertmanager, runtimes
from infra.config import StackConfig
from infra.containers import engine
from infra.procs import stop, wait_until
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.stack import scratch_config, wait_for

pytestmark = pytest.mark.integration


class Hooks:
    """A webhook receiver: every POST body, by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.received.append((self.path, orjson.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str) -> list[tuple[str, str]]:
        """(alert name, status) of every alert sent to `path`."""
        return [
            (alert["labels"]["alertname"], alert["status"])
            for at, body in self.received
            if at == path
            for alert in body["alerts"]
        ]


@pytest.fixture
def routed() -> Iterator[tuple[StackConfig, Hooks]]:
    hooks = Hooks()
    config = scratch_config(
        alert_webhook_url=f"{hooks.url}/chat", alert_page_webhook_url=f"{hooks.url}/pager"
    )
    try:
        with engine.serving(config):
            alertmanager.prepare(config)
            process = runtimes.spawn(config, alertmanager.command(config))
            try:
                assert wait_until(lambda: alertmanager.ready(config), 60, 0.2)
                yield config, hooks
            finally:
                stop(process)
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()
        shutil.rmtree(config.state_dir, ignore_errors=True)


def alert(name: str, severity: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, "process": "test"},
        "annotations": {"summary": f"{name} in a test"},
        "startsAt": datetime.now(UTC).isoformat(),
    }


def test_each_severity_reaches_its_own_webhook(
    routed: tuple[StackConfig, Hooks],
) -> None:
    config, hooks = routed
    url = alertmanager.url(config) + "/api/v2/alerts"
    fired = [alert("TestPage", "critical"), alert("TestTicket", "warning")]
    assert httpx.post(url, json=fired).status_code == 200
    # Within the group waits (10 s critical, 30 s warning), each on its own receiver.
    wait_for(lambda: True if hooks.alerts("/chat") else None, timeout_s=90, interval_s=0.5)
    wait_for(lambda: True if hooks.alerts("/pager") else None, timeout_s=90, interval_s=0.5)
    assert hooks.alerts("/pager") == [("TestPage", "firing")]
    assert hooks.alerts("/chat") == [("TestTicket", "firing")]


def test_prometheus_sends_to_alertmanager_and_the_overview_shows_silences(stack: Stack) -> None:
    config = stack.config

    def alertmanagers() -> list[str] | None:
        answer = httpx.get(config.prometheus_url + "/api/v1/alertmanagers").json()
        return [a["url"] for a in answer["data"]["activeAlertmanagers"]] or None

    # Prometheus finds the Alertmanagers it is told of a moment after it starts.
    assert wait_for(alertmanagers) == [f"{config.alertmanager_url}/api/v2/alerts"]

    name = f"Test{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    silence = {
        "matchers": [{"name": "alertname", "value": name, "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "ops-1",
        "comment": "a test's silence",
    }
    created = httpx.post(config.alertmanager_url + "/api/v2/silences", json=silence)
    assert created.status_code == 200, created.text
    silence_id = created.json()["silenceID"]
    httpx.post(config.alertmanager_url + "/api/v2/alerts", json=[alert(name, "critical")])
    try:
        token = issue_token(config.jwt_private_key, sub="ops-1", role=Role.OPS)
        url = f"{stack.public_url()}/v1/ops/overview"

        def shown() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(
                url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            ).json()
            held = [a for a in body["alerts"] if a["name"] == name]
            return body if held else None

        body = wait_for(shown, timeout_s=30, interval_s=0.5)
        assert body["alertmanager"]["up"] is True
        [held] = [a for a in body["alerts"] if a["name"] == name]
        assert held["state"] == "silenced" and held["silenced_by"] == [silence_id]
        [listed] = [s for s in body["silences"] if s["id"] == silence_id]
        assert listed["matchers"] == [f"alertname={name}"]
        assert listed["comment"] == "a test's silence"
    finally:
        httpx.delete(f"{config.alertmanager_url}/api/v2/silence/{silence_id}")

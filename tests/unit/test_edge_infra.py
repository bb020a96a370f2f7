"""The edge tiers' configurations, the topology the stack records, and the supervisor's
restart rules, without the stack running (one test starts a real process to kill)."""

import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from infra import edge, haproxy, topology
from infra.components import Component
from infra.config import StackConfig
from infra.launch import Command
from infra.procs import ProcessRef, StackError, stop, wait_until
from infra.stack import Record, Stack
from infra.supervisor import RestartPolicy, supervise_once
from runtime.http import retry_after


def config(tmp_path: Path, **overrides: object) -> StackConfig:
    return StackConfig(state_dir=tmp_path, **overrides)  # type: ignore[arg-type]


# --- HAProxy -------------------------------------------------------------------------
def test_haproxy_routes_each_path_to_its_service_and_lists_every_process(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, api_processes=3, notifier_processes=2, ingest_processes=1)
    text = haproxy.render(cfg, haproxy.topology(cfg))
    assert f"bind 127.0.0.1:{cfg.haproxy_port}" in text
    assert "acl to_ingest path /v1/pings" in text and "use_backend ingest if to_ingest" in text
    assert "acl to_notifier path /ws" in text and "default_backend api" in text
    for i in range(3):
        assert f"server api-{i + 1} 127.0.0.1:{cfg.api_port + i} check" in text
    assert f"server notifier-2 127.0.0.1:{cfg.notifier_port + 1} check" in text
    notifier = text.split("\nbackend notifier")[1]
    assert "balance leastconn" in notifier and "timeout tunnel" in text
    assert text.count("http-check send meth GET uri /readyz") == 3


def test_haproxy_retries_only_what_is_safe_to_send_twice(tmp_path: Path) -> None:
    text = haproxy.render(config(tmp_path), haproxy.topology(config(tmp_path)))
    assert "retry-on conn-failure empty-response" in text
    assert "option redispatch 1" in text
    # A connection that failed carried nothing; any other failure is retried for
    # idempotent methods only.
    assert "http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS" in text
    assert "prometheus-exporter" in text and "expose-fd listeners" in text


def test_haproxy_error_pages_keep_the_contracts_shape() -> None:
    raw = haproxy.error_file(503, "Service Unavailable", "unavailable", "no process")
    head, body = raw.split("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503") and "Retry-After: 1" in head
    assert f"Content-Length: {len(body)}" in head
    assert body == '{"error":{"code":"unavailable","message":"no process","details":null}}'


def test_every_503_spreads_its_clients_retries(tmp_path: Path) -> None:
    # The services draw Retry-After per answer; HAProxy rewrites it on every 503 it sends,
    # its own or a service's.
    drawn = {retry_after()["Retry-After"] for _ in range(200)}
    assert drawn == {"1", "2", "3"}
    text = haproxy.render(config(tmp_path), haproxy.topology(config(tmp_path)))
    assert "set-header Retry-After %[rand(3),add(1)] if { status 503 }" in text


def test_a_backend_scaled_to_nothing_still_renders(tmp_path: Path) -> None:
    cfg = config(tmp_path, notifier_processes=0)
    assert "# no processes" in haproxy.render(cfg, haproxy.topology(cfg))


# --- nginx ---------------------------------------------------------------------------
def test_the_edge_caches_only_public_answers_to_anonymous_requests(tmp_path: Path) -> None:
    text = edge.render(config(tmp_path))
    assert "proxy_cache_lock on;" in text
    # How long a stale copy may serve is the api's header's (bounded), never open-ended.
    assert "proxy_cache_use_stale" not in text
    assert "proxy_cache_background_update on;" in text
    assert "proxy_cache_bypass $http_authorization $http_cookie;" in text
    assert "proxy_no_cache $http_authorization $http_cookie $edge_not_public;" in text
    assert "proxy_cache_valid" not in text  # lifetimes come from the api's Cache-Control
    assert f"add_header {edge.CACHE_STATUS_HEADER} $upstream_cache_status always;" in text
    # Only a connection error is retried, and a POST only to ingest (a ping is stored once
    # however often it arrives): never one of the api's.
    resent = re.findall(r"location ([^{]*)\{[^}]*proxy_next_upstream error non_idempotent;", text)
    assert [r.strip() for r in resent] == ["~ ^(/v1/pings|/osmand)$"]
    assert text.count("proxy_next_upstream error;") == 3
    ws = text.split("location = /ws")[1].split("}")[0]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws and "proxy_cache" not in ws
    assert "user " not in text.split("worker_processes")[0]


def test_nginx_s_counters_are_on_loopback_apart_from_the_public_port(tmp_path: Path) -> None:
    cfg = config(tmp_path, edge_status_port=31883)
    text = edge.render(cfg)
    status = text.split("listen 127.0.0.1:31883;")[1].split("    }\n")[0]
    assert "location = /stub_status {\n            stub_status;" in status
    public = text.split(f"listen 127.0.0.1:{cfg.edge_port} ")[1]
    assert "stub_status" not in public.split("listen 127.0.0.1:31883;")[0]


def test_the_edge_runs_as_its_own_user_with_its_config_read_only(tmp_path: Path) -> None:
    command = edge.command(config(tmp_path))
    assert command.user == "www-data"
    assert {(m.path, m.writable) for m in command.mounts} == {
        (edge.config_path(config(tmp_path)), False),
        (edge.base_dir(config(tmp_path)), True),
    }


# --- topology ------------------------------------------------------------------------
def test_up_honours_explicit_counts_over_the_recorded_topology(tmp_path: Path) -> None:
    topology.with_count(config(tmp_path), "api", 3)
    assert topology.recorded(config(tmp_path)).api_processes == 3
    # `up` without --api keeps the running stack's 3; `up --api 2` changes it.
    assert topology.requested(config(tmp_path)).api_processes == 3
    assert topology.requested(config(tmp_path, api_processes=2)).api_processes == 2
    assert topology.recorded(config(tmp_path)).api_processes == 2
    topology.forget(config(tmp_path))
    assert topology.recorded(config(tmp_path)).api_processes == 1


@pytest.mark.parametrize(("service", "count"), [("kafka", 2), ("api", -1), ("api", 9)])
def test_scale_refuses_what_it_cannot_do(tmp_path: Path, service: str, count: int) -> None:
    with pytest.raises(StackError):
        topology.with_count(config(tmp_path), service, count)


def test_a_record_round_trips_with_its_supervision_state() -> None:
    record = Record("api-1", ProcessRef(1, 2), {"url": "u"}, supervised=True, restarts=3)
    assert Record.from_json("api-1", record.as_json()) == record
    # A state file written before supervision existed still loads.
    old = {"pid": 1, "start_ticks": 2, "stop_signal": 15, "url": "u"}
    assert Record.from_json("api-1", old) == Record("api-1", ProcessRef(1, 2), {"url": "u"})


# --- the supervisor's rules ----------------------------------------------------------
def test_the_first_restart_is_immediate_then_the_wait_doubles_then_it_gives_up() -> None:
    policy = RestartPolicy(max_quick_exits=4, stable_after_s=30, first_backoff_s=1)
    policy.alive("api-1", now=0.0)
    now = 100.0  # it ran long: this exit starts the count
    waits = []
    for _ in range(4):
        due = policy.exited("api-1", now)
        assert due is not None
        waits.append(due - now)
        assert policy.exited("api-1", now) == due  # asked again: the same time
        now = due
        policy.started("api-1", now)
        now += 2  # and it dies again soon after
    assert waits == [0.0, 1.0, 2.0, 4.0]
    assert policy.exited("api-1", now) is None


def test_a_process_that_ran_a_while_starts_the_count_afresh() -> None:
    policy = RestartPolicy(max_quick_exits=2, stable_after_s=30)
    policy.alive("x", 0.0)
    for _ in range(5):
        now = policy.exited("x", 40.0 + _ * 100)
        assert now is not None
        policy.started("x", now)
    assert policy.exited("x", 600.0 + 100) == 700.0


SLEEPER = "import threading; threading.Event().wait()"


def _supervised_stack(tmp_path: Path) -> Stack:
    stack = Stack(config(tmp_path))
    component = Component(
        "sleeper",
        command=lambda: Command("sleeper", None, [sys.executable, "-c", SLEEPER]),
        ready=lambda: True,
        ports=(),
        endpoint={},
        supervised=True,
    )
    stack.components = {"sleeper": component}
    return stack


@pytest.mark.loopback  # probes processes of its own on 127.0.0.1
def test_the_supervisor_restarts_a_killed_process_and_not_a_stopped_one(
    tmp_path: Path,
) -> None:
    stack = _supervised_stack(tmp_path)
    policy = RestartPolicy()
    try:
        stack.start("sleeper")
        first = stack.records["sleeper"].ref
        supervise_once(stack, policy, now=0.0)
        assert stack.records["sleeper"].ref == first  # alive: left alone
        stack.crash("sleeper")
        assert wait_until(lambda: not first.alive(), 5)
        supervise_once(stack, policy, now=100.0)
        second = stack.records["sleeper"]
        assert second.ref != first and second.ref.alive() and second.restarts == 1
        # Stopped through the stack: forgotten first, so never brought back.
        stack.stop("sleeper")
        supervise_once(stack, policy, now=200.0)
        assert "sleeper" not in stack.records
    finally:
        for record in stack.records.values():
            stop(record.ref, sig=signal.SIGKILL)


@pytest.mark.loopback  # probes processes of its own on 127.0.0.1
def test_the_supervisor_restarts_a_live_process_whose_probe_fails_looks_in_a_row(
    tmp_path: Path,
) -> None:
    stack = _supervised_stack(tmp_path)
    answers = {"healthy": True}
    stack.components["sleeper"] = replace(
        stack.components["sleeper"], live=lambda: answers["healthy"]
    )
    policy = RestartPolicy(stuck_after_looks=3, look_every_s=5, startup_grace_s=30)
    try:
        stack.start("sleeper")
        first = stack.records["sleeper"].ref
        answers["healthy"] = False
        for now in (0.0, 10.0, 20.0):  # within its start-up grace: not looked at
            supervise_once(stack, policy, now)
        assert first.alive()
        for now in (30.0, 32.0, 35.0, 40.0):  # three failed looks 5 s apart (32: not due)
            supervise_once(stack, policy, now)
        assert wait_until(lambda: not first.alive(), 5), "a stuck process was left running"
        supervise_once(stack, policy, 41.0)
        second = stack.records["sleeper"]
        assert second.ref != first and second.ref.alive() and second.restarts == 1
        # A healthy look between failures starts the count afresh.
        for now, healthy in ((80.0, False), (85.0, False), (90.0, True), (95.0, False)):
            answers["healthy"] = healthy
            supervise_once(stack, policy, now)
        assert stack.records["sleeper"].ref == second.ref and second.ref.alive()
    finally:
        for record in stack.records.values():
            stop(record.ref, sig=signal.SIGKILL)


@pytest.mark.loopback  # probes processes of its own on 127.0.0.1
def test_the_supervisor_gives_up_and_says_so(tmp_path: Path) -> None:
    stack = _supervised_stack(tmp_path)
    policy = RestartPolicy(max_quick_exits=1)
    try:
        stack.start("sleeper")
        now = 0.0
        supervise_once(stack, policy, now)
        for _ in range(2):
            ref = stack.records["sleeper"].ref
            stack.crash("sleeper")
            assert wait_until(lambda ref=ref: not ref.alive(), 5)  # type: ignore[misc]
            now += 1
            supervise_once(stack, policy, now)
        assert stack.records["sleeper"].gave_up
        assert not stack.running("sleeper")
        assert stack.status()["sleeper"]["gave_up"] is True
    finally:
        for record in stack.records.values():
            stop(record.ref, sig=signal.SIGKILL)


@pytest.mark.loopback  # probes processes of its own on 127.0.0.1
def test_a_process_that_cannot_be_started_again_is_given_up_on(tmp_path: Path) -> None:
    stack = _supervised_stack(tmp_path)
    policy = RestartPolicy(max_quick_exits=2, first_backoff_s=1)
    try:
        stack.start("sleeper")
        ref = stack.records["sleeper"].ref
        supervise_once(stack, policy, 0.0)

        def broken() -> Command:
            raise StackError("its binary is gone")

        stack.components["sleeper"] = replace(stack.components["sleeper"], command=broken)
        stack.crash("sleeper")
        assert wait_until(lambda: not ref.alive(), 5)
        for now in (100.0, 101.0, 102.0, 103.0):  # at once, then after 1 s: both fail
            supervise_once(stack, policy, now)
        assert stack.records["sleeper"].gave_up
    finally:
        for record in stack.records.values():
            stop(record.ref, sig=signal.SIGKILL)

"""edge: what the two tiers in front of the services (docs/edge.md) give and cost, in
one run on the running stack.

- Cached: a share link's public view through the edge (nginx's cache answers) against the
  same view from one api process directly (the api's own cache answers: Redis and its
  in-process cache), and through HAProxy alone. The goal: the edge at 5x the api or more.
- Uncached: a private job view (never cached at the edge), read by a dispatcher (a
  customer would be held to their own rate: api/principal_limit.py) from the api
  directly, through HAProxy, and through nginx and HAProxy: the tiers' overhead.
- nginx's ceiling on this machine: its own static health answer.

wrk (C, from Debian) drives each phase as fast as it is answered, on the same two cores as
the stack: its own CPU is reported. Requests that reached the api during the cached edge
phase are counted from HAProxy's exporter (the edge refreshes an entry when it expires).

Options (--set KEY=VALUE): duration_s (each phase, default 10), connections (default 64)."""

import uuid
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
from prometheus_client.parser import text_string_to_metric_families

from bench.report import latency_bars, save_figure
from bench.scenarios.reads import wrk_summary
from bench.tokens import Tokens
from bench.wrk_runner import run_wrk_gets
from infra import edge, haproxy
from infra.procs import StackError
from infra.stack import Stack
from schemas.auth import Role

PICKUP = {"lat": 12.9716, "lon": 77.5946}
DROPOFF = {"lat": 12.9352, "lon": 77.6245}


def api_requests(stack: Stack) -> float:
    text = httpx.get(stack.records[haproxy.NAME].endpoint["metrics"], timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "haproxy_backend_http_requests_total"
        and sample.labels.get("proxy") == "api"
    )


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    public = stack.public_url()
    if public is None or not stack.running(haproxy.NAME):
        raise StackError("the edge is not running: start the stack with 'telemetry up'")
    config = stack.config
    duration_s = int(options.get("duration_s", 10))
    connections = int(options.get("connections", 64))
    directory = config.state_dir / "bench" / "edge"
    directory.mkdir(parents=True, exist_ok=True)
    tokens = Tokens(config.jwt_private_key)
    prefix = f"edge{uuid.uuid4().hex[:6]}"
    customer = tokens.get(f"{prefix}-customer", Role.CUSTOMER)
    dispatcher = tokens.get(f"{prefix}-dispatcher", Role.DISPATCHER)
    auth = {"Authorization": f"Bearer {customer}"}

    api = stack.urls("api")[0]
    tiers = {
        "api directly": api,
        "HAProxy": stack.records[haproxy.NAME].endpoint["url"],
        "nginx + HAProxy": public,
    }
    job = httpx.post(f"{api}/v1/jobs", json={"pickup": PICKUP, "dropoff": DROPOFF}, headers=auth)
    job.raise_for_status()
    job_path = f"/v1/jobs/{job.json()['job_id']}"
    link = httpx.post(f"{api}{job_path}/share", json={}, headers=auth, timeout=30)
    link.raise_for_status()
    share_path = str(link.json()["url"])

    def wrk(name: str, base: str, path: str, token: str) -> dict[str, Any]:
        requests = directory / f"{name}.tsv"
        requests.write_text(f"{path}\t{token}\t-\n")
        result = wrk_summary(
            run_wrk_gets(base, requests, duration_s=duration_s, connections=connections)
        )
        # A rate of wrong answers is no rate: the run stops rather than report it.
        wrong = {k: v for k, v in result["statuses"].items() if not k.startswith("2")}
        if wrong or any(result["errors"].values()):
            raise StackError(f"{name}: answers {wrong}, errors {result['errors']}")
        return result

    report: dict[str, Any] = {
        "config": {
            "api_processes": len(stack.urls("api")),
            "wrk_duration_s": duration_s,
            "wrk_connections": connections,
        },
        "cached": {},
        "uncached": {},
    }
    report["ceiling"] = wrk("static", public, edge.HEALTH_PATH, "-")
    for tier, base in tiers.items():
        httpx.get(base + share_path).raise_for_status()  # warm: every tier's first answer
        before = api_requests(stack)
        result = wrk(f"share-{len(report['cached'])}", base, share_path, "-")
        report["cached"][tier] = result | {"api_requests": api_requests(stack) - before}
    for tier, base in tiers.items():
        result = wrk(f"private-{len(report['uncached'])}", base, job_path, dispatcher)
        report["uncached"][tier] = result
    return report


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(20, 6))
    fig.suptitle(f"edge - {report['started_at']}")
    rows = {f"share view, {t}": r for t, r in report["cached"].items()}
    rows |= {f"private view, {t}": r for t, r in report["uncached"].items()}
    rows["nginx static (ceiling)"] = report["ceiling"]
    names = list(rows)
    axes[0].barh(names, [rows[n]["requests_per_s"] for n in names])
    axes[0].set_xscale("log")
    axes[0].set_xlabel("requests/s (log scale)")
    latency_bars(axes[1], {n: rows[n]["latency_ms"] for n in names}, "latency, ms")
    axes[1].set_yticks([])
    axes[2].barh(names, [rows[n]["generator_cpu_cores"] for n in names])
    axes[2].set_xlabel("wrk's own CPU, cores")
    axes[2].set_yticks([])
    return save_figure(fig, path)


def _line(label: str, r: dict[str, Any], base: float | None = None) -> str:
    lat = r["latency_ms"]
    ratio = f" ({r['requests_per_s'] / base:.2f} x the api)" if base else ""
    failed = {k: v for k, v in r["statuses"].items() if not k.startswith(("2", "3"))}
    return (
        f"{label}: {r['requests_per_s']:,.0f} req/s{ratio}, p50 {lat['p50']} ms,"
        f" p99 {lat['p99']} ms, non-2xx {failed or 0}, errors {r['errors']},"
        f" wrk {r['generator_cpu_cores']} cores"
    )


def summary(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    lines = [
        f"{c['api_processes']} api process(es); wrk {c['wrk_duration_s']} s per phase,"
        f" {c['wrk_connections']} connections, on the stack's two cores"
    ]
    api = report["cached"]["api directly"]["requests_per_s"]
    for tier, r in report["cached"].items():
        lines.append(
            _line(f"share view, {tier}", r, api)
            + f"; requests that reached the api {r['api_requests']:.0f}"
        )
    edge_rate = report["cached"]["nginx + HAProxy"]["requests_per_s"]
    goal = "met" if edge_rate >= 5 * api else "not met"
    lines.append(
        f"cached share view through the edge: {edge_rate / api:.1f} x the api (goal >= 5 x: {goal})"
    )
    api = report["uncached"]["api directly"]["requests_per_s"]
    for tier, r in report["uncached"].items():
        lines.append(_line(f"private view (uncached), {tier}", r, api))
    lines.append(_line("nginx's own static answer (its ceiling here)", report["ceiling"]))
    return lines

"""Benchmark reports, one directory per run (bench/reports/, not tracked): a JSON file, a
PNG of the run over time, and a Markdown summary."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt
import orjson
from matplotlib.figure import Figure


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    """Lays the figure out, writes it as a PNG and frees it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def latency_bars(ax: Any, rows: dict[str, dict[str, Any]], xlabel: str) -> None:
    """p50 and p99 side by side for each row (a dict with those keys), on a log scale."""
    labels = list(rows)
    for offset, key in ((-0.2, "p50"), (0.2, "p99")):
        ax.barh(
            [i + offset for i in range(len(labels))],
            [rows[n].get(key, 0) for n in labels],
            0.4,
            label=key,
        )
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xscale("log")
    ax.set_xlabel(f"{xlabel} (log scale)")
    ax.legend()


def plot_phases(report: dict[str, Any], path: Path) -> Path:
    """One bar per phase: accepted pings/s, latency p50/p99, CPU of the busiest components."""
    phases = report["phases"]
    names = [p["name"] for p in phases]
    fig, axes = plt.subplots(1, 3, figsize=(20, 7))
    fig.suptitle(f"{report['scenario']} - {report['started_at']}")
    ax = axes[0]
    ax.barh(names, [p.get("accepted_pings_per_s", 0.0) for p in phases])
    ax.set_xscale("log")
    ax.set_title("accepted pings/s (log scale)")
    ax = axes[1]
    y = range(len(phases))
    ax.barh(
        [i + 0.2 for i in y],
        [p.get("latency_ms", {}).get("p99", 0.0) for p in phases],
        0.4,
        label="p99",
    )
    ax.barh(
        [i - 0.2 for i in y],
        [p.get("latency_ms", {}).get("p50", 0.0) for p in phases],
        0.4,
        label="p50",
    )
    ax.set_yticks(list(y), names)
    ax.set_xscale("log")
    ax.set_title("request latency, ms (log scale)")
    ax.legend()
    ax = axes[2]
    components = sorted({c for p in phases for c in p.get("cpu_pct", {})})
    width = 0.8 / max(1, len(components))
    for k, component in enumerate(components):
        ax.barh(
            [i - 0.4 + k * width for i in y],
            [p.get("cpu_pct", {}).get(component, 0.0) for p in phases],
            width,
            label=component,
        )
    ax.set_yticks(list(y), names)
    ax.set_title("mean CPU % per component")
    ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Throughput, latency percentiles, consumer lag and CPU per component."""
    if "phases" in report:
        return plot_phases(report, path)
    progress = report.get("progress", [])
    samples = report.get("samples", [])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"{report['scenario']} - {report['started_at']}")

    ax = axes[0][0]
    times = [p["t_s"] for p in progress]
    rates = [p["accepted_per_s"] for p in progress]
    ax.plot(times, rates)
    ax.set_title("accepted pings/s")
    ax.set_xlabel("s")

    ax = axes[0][1]
    curve = report.get("latency_percentiles_ms", {})
    if curve:
        ax.plot([float(p) for p in curve], list(curve.values()), marker="o")
    ax.set_title("request latency by percentile")
    ax.set_xlabel("percentile")
    ax.set_ylabel("ms")

    ax = axes[1][0]
    lag_t = [s["t_s"] for s in samples if s["lag_seconds"] is not None]
    ax.plot(lag_t, [s["lag_seconds"] for s in samples if s["lag_seconds"] is not None])
    ax.set_title("consumer lag (s)")
    ax.set_xlabel("s")

    ax = axes[1][1]
    names = sorted({name for s in samples for name in s["cpu_pct"]})
    for name in names:
        ax.plot(
            [s["t_s"] for s in samples], [s["cpu_pct"].get(name, 0.0) for s in samples], label=name
        )
    ax.set_title("CPU % per component")
    ax.set_xlabel("s")
    if names:
        ax.legend(fontsize="small")

    return save_figure(fig, path)


def write_summary(path: Path, command: str, lines: list[str]) -> Path:
    """One run's figures in Markdown beside its JSON and PNG, with the exact command that
    produced them: what a curated table in docs/benchmarks.md is copied from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(f"- {line}" for line in lines)
    path.write_text(f"## {command} ({stamp})\n\n```\n{command}\n```\n\n{body}\n")
    return path

"""Prometheus (Debian's), started by the stack (docs/ops.md): it scrapes every service
process, HAProxy's exporter, the ops exporter (consumer lag, dead letters, the replica's
replay lag), Alertmanager and the machine (the node exporter) every few seconds, keeps a
week, evaluates the alert rules in `infra/alerts/rules.yml` and sends what fires to
Alertmanager (infra/alertmanager.py). Its scrape targets are written from the running
topology and reloaded when `telemetry scale` changes it."""

import shutil
from pathlib import Path

import httpx
import orjson

from infra import exporters, haproxy, services
from infra.config import REPO_ROOT, StackConfig
from infra.launch import Command, Mount
from infra.procs import PROMETHEUS_USER, StackError, own_tree, run

NAME = "prometheus"
BINARY = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
RULES = REPO_ROOT / "infra" / "alerts" / "rules.yml"
RULE_TESTS = REPO_ROOT / "infra" / "alerts" / "rules_test.yml"
# Every target's job label: the service's module (api, ingest...), so a rule or a query
# groups a service's processes; the process's name is its `process` label.
OPS_EXPORTER_JOB = "ops-exporter"
HAPROXY_JOB = "haproxy"
ALERTMANAGER_JOB = "alertmanager"
NODE_JOB = "node"


def url(config: StackConfig) -> str:
    return config.prometheus_url


def conf_dir(config: StackConfig) -> Path:
    """Its configuration and rules: a dir, so that a configuration replaced by a rename is
    seen by a container that mounts it."""
    return config.run_dir / "prometheus.d"


def config_path(config: StackConfig) -> Path:
    return conf_dir(config) / "prometheus.yml"


def rules_path(config: StackConfig) -> Path:
    """The alert rules as Prometheus reads them: a copy beside its configuration, so that a
    Prometheus in a container (which has its own files, not the repository) reads them too."""
    return conf_dir(config) / "rules.yml"


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "prometheus"


def scrape_jobs(config: StackConfig) -> dict[str, list[tuple[str, str]]]:
    """job -> [(process name, host:port)] for the stack's topology."""
    jobs: dict[str, list[tuple[str, str]]] = {}
    for spec in services.specs(config):
        service = spec.name.rsplit("-", 1)[0]  # api-2 -> api, photo-worker-1 -> photo-worker
        jobs.setdefault(service, []).append((spec.name, f"127.0.0.1:{spec.port}"))
    jobs[HAPROXY_JOB] = [(haproxy.NAME, f"127.0.0.1:{config.haproxy_stats_port}")]
    jobs[OPS_EXPORTER_JOB] = [(OPS_EXPORTER_JOB, f"127.0.0.1:{config.ops_exporter_port}")]
    jobs[ALERTMANAGER_JOB] = [(ALERTMANAGER_JOB, f"127.0.0.1:{config.alertmanager_port}")]
    jobs[NODE_JOB] = [("node-exporter", f"127.0.0.1:{config.node_exporter_port}")]
    for exporter in exporters.exporters(config):
        jobs.setdefault(exporter.job, []).append((exporter.name, f"127.0.0.1:{exporter.port}"))
    return jobs


def render(config: StackConfig, jobs: dict[str, list[tuple[str, str]]]) -> str:
    """The configuration, a pure function of the settings and the targets. JSON is YAML: no
    YAML writer needed, and nothing in it needs quoting rules."""
    document = {
        "global": {
            "scrape_interval": f"{config.prometheus_scrape_interval_s}s",
            "scrape_timeout": f"{min(config.prometheus_scrape_interval_s, 4)}s",
            "evaluation_interval": f"{config.prometheus_scrape_interval_s}s",
        },
        "rule_files": [str(rules_path(config))],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{config.alertmanager_port}"]}]}
            ]
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [target], "labels": {"process": name}} for name, target in targets
                ],
            }
            for job, targets in jobs.items()
        ],
    }
    header = b"# Written by the stack (infra/prometheus.py) from its topology: edits are lost.\n"
    return (header + orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n").decode()


def binary(name: str = BINARY) -> str:
    found = shutil.which(Path(name).name) or (name if Path(name).exists() else None)
    if found is None:
        raise StackError("Prometheus is missing: install it with 'apt-get install prometheus'")
    return found


def write_rules(config: StackConfig) -> None:
    rules_path(config).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RULES, rules_path(config))


def write(config: StackConfig) -> bool:
    """Writes the configuration for the topology, checked by promtool first; True when it
    changed."""
    write_rules(config)
    path = config_path(config)
    text = render(config, scrape_jobs(config))
    if path.exists() and path.read_text() == text:
        return False
    candidate = path.with_suffix(".new.yml")
    candidate.write_text(text)
    run(check_command(candidate, binary(PROMTOOL)))
    candidate.replace(path)
    return True


def check_command(path: Path, program: str = PROMTOOL) -> list[str]:
    """promtool's check of a configuration, the rules it names too (the stack's, and
    compose's first run)."""
    return [program, "check", "config", str(path)]


def prepare(config: StackConfig) -> None:
    write(config)
    own_tree(data_dir(config), PROMETHEUS_USER)


def command(config: StackConfig) -> Command:
    return Command(
        NAME,
        "prometheus",
        [
            BINARY,
            f"--config.file={config_path(config)}",
            f"--storage.tsdb.path={data_dir(config)}",
            f"--storage.tsdb.retention.time={config.prometheus_retention}",
            f"--web.listen-address=127.0.0.1:{config.prometheus_port}",
            # POST /-/reload: how `scale` hands it a new topology.
            "--web.enable-lifecycle",
            "--log.format=json",
        ],
        user=PROMETHEUS_USER,
        mounts=(Mount(conf_dir(config)), Mount(data_dir(config), writable=True)),
    )


def follow(config: StackConfig) -> bool:
    """Rewrites the targets for the topology and, when they changed, reloads Prometheus."""
    if not write(config):
        return False
    try:
        response = httpx.post(url(config) + "/-/reload", timeout=10)
    except httpx.HTTPError as exc:
        raise StackError(f"could not reload Prometheus: {exc}") from exc
    if response.status_code != 200:
        raise StackError(f"Prometheus refused the reload: {response.text.strip()}")
    return True


def ready(config: StackConfig) -> bool:
    try:
        return httpx.get(url(config) + "/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

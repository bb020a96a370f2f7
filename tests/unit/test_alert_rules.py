"""The alert rules (infra/alerts/rules.yml) are valid, and each one's unit tests in
rules_test.yml pass under promtool: they fire on what should wake someone, after their
`for`, and not on the healthy series beside it. Every rule has such a test."""

import subprocess
from pathlib import Path

import yaml

from infra import prometheus
from infra.config import REPO_ROOT


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # The stack's install puts Prometheus's package (promtool with it) on the machine.
    return subprocess.run(
        [prometheus.binary(prometheus.PROMTOOL), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=prometheus.RULES.parent,
    )


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", prometheus.RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_passes_its_unit_tests() -> None:
    result = promtool("test", "rules", prometheus.RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    # The check above can fail: an expectation that is not met fails the run.
    tests = yaml.safe_load(prometheus.RULE_TESTS.read_text())
    tests["rule_files"] = [str(prometheus.RULES)]
    first = tests["tests"][0]["alert_rule_test"][0]  # ConsumerLagHigh, not yet firing
    first["exp_alerts"] = [{"exp_labels": {"severity": "warning", "group": "telemetry-streams"}}]
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_rule_has_a_test_in_which_it_fires() -> None:
    rules = yaml.safe_load(prometheus.RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(prometheus.RULE_TESTS.read_text())
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= firing, f"rules never seen firing in a test: {sorted(alerts - firing)}"
    severities = {rule["labels"]["severity"] for g in rules["groups"] for rule in g["rules"]}
    assert severities <= {"warning", "critical"}


RUNBOOK_SECTIONS = ("## What it means", "## How to confirm", "## What to do")


def test_every_rule_links_its_runbook_which_says_what_how_and_what_to_do() -> None:
    rules = yaml.safe_load(prometheus.RULES.read_text())
    runbooks = REPO_ROOT / "docs" / "runbooks"
    alerts = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            alert = rule["alert"]
            alerts.add(alert)
            link = rule["annotations"].get("runbook_url")
            assert link == f"docs/runbooks/{alert}.md", alert
            text = (REPO_ROOT / link).read_text()
            assert text.startswith(f"# {alert} ({rule['labels']['severity']})"), alert
            positions = [text.find(section) for section in RUNBOOK_SECTIONS]
            assert -1 not in positions and positions == sorted(positions), alert
    # No runbook for an alert that no longer exists.
    assert {path.stem for path in runbooks.glob("*.md")} == alerts

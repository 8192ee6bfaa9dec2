"""deploy/prometheus: the scrape config and the alert rules pass promtool (check config, check
rules, and the unit tests in deploy/prometheus/tests), every alert has its runbook and a firing and
a quiet unit test, and every metric a rule names is one mlp exposes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from obs_helpers import (
    PROMETHEUS,
    PROMTOOL_BIN,
    defined_sample_names,
    metric_names,
)

CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "mlp.rules.yml"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTS = {
    "MlpHighErrorRate",
    "MlpHighP99Latency",
    "MlpQueueFull",
    "MlpNoModelReady",
    "MlpModelUnavailable",
    "MlpTargetDown",
    "MlpGpuMemoryHigh",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Never skipped: CI installs Debian's prometheus package, which ships promtool.
    if not PROMTOOL_BIN.exists():
        pytest.fail(f"{PROMTOOL_BIN} is missing: apt-get install prometheus")
    return subprocess.run(
        [str(PROMTOOL_BIN), *args], capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_config_and_the_rules_it_loads_pass_promtool_check_config(tmp_path: Path) -> None:
    # The config names the rules where compose mounts them; a copy naming them here makes
    # check config load and check them with it.
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    for path in (CONFIG, copy):
        result = promtool("check", "config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in promtool("check", "config", str(copy)).stdout


def test_the_scrape_jobs_are_the_compose_services() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets == {
        "mlp-serve": ["api:8000"],
        "mlp-train": ["train:9400"],
        "prometheus": ["localhost:9090"],
    }
    assert jobs["mlp-serve"]["metrics_path"] == "/metrics"


def test_the_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_the_alert_unit_tests_pass() -> None:
    assert UNIT_TESTS
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert {rule["alert"] for rule in rules()} == ALERTS
    assert firing == ALERTS
    assert quiet == ALERTS


def test_every_alert_has_a_runbook_and_uses_metrics_mlp_exposes() -> None:
    readme = (PROMETHEUS / "README.md").read_text(encoding="utf-8")
    defined = defined_sample_names()
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert "What to do:" in annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert f"**{rule['alert']}**" in readme, f"{rule['alert']} is not in the README"
        used = metric_names(rule["expr"])
        assert used, rule["expr"]
        assert used <= defined, f"{rule['alert']} names unknown metrics {used - defined}"

"""A real Prometheus scrapes a running `dockvault run` and evaluates the shipped alert rules.

Prometheus comes from Debian's `prometheus` package and listens on 127.0.0.1 only. The rules are the
shipped file with one change: `for:` durations are cut to seconds so the test takes a minute, not an hour;
every expression is evaluated exactly as shipped.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.e2e.cli import dockvault
from tests.treecheck import populate_volume
from tests.waiting import eventually

pytestmark = pytest.mark.docker
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "dockvault-rules.yaml"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with NO_PROXY.open(url, timeout=5) as response:
        return json.load(response)


until = functools.partial(eventually, timeout=90, tolerate=(OSError,))  # OSError: not listening yet


@pytest.fixture
def promtool_or_skip():
    if shutil.which("prometheus") is None:
        if os.environ.get("DOCKVAULT_HARNESS") == "1":
            pytest.fail("prometheus is not installed inside the harness")
        pytest.skip("Debian's prometheus package is not installed; run through `make test`")


def test_rpo_alert_fires_when_overdue_and_resolves_after_a_backup(promtool_or_skip, docker_client, volumes, repo_dir,
                                                                   cli_env, tmp_path):
    volume = volumes("rpo")
    populate_volume(docker_client, volume, megabytes=1)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    (config / "p.yaml").write_text(yaml.safe_dump({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "rpo-demo"},
        "spec": {"objectives": {"rpo": "12s", "rto": "30m"}, "targets": [{"name": "data", "volume": {"name": volume}}],
                 "storage": {"local": {"path": str(repo_dir)}},
                 "drill": {"schedule": "0 5 * * 0"}}}))  # never drilled yet: the daemon drills at once
    dockvault("backup", "rpo-demo", env=cli_env)

    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": "dockvault", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    run = subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--metrics-addr", f"127.0.0.1:{metrics_port}"],
                           env=cli_env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"),
                           stdin=subprocess.DEVNULL)
    prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
                                  stdin=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list:
        return get_json(f"{api}/query?query={urllib.parse.quote(expr)}")["data"]["result"]

    def alert_state(name: str) -> str | None:
        for alert in get_json(f"{api}/alerts")["data"]["alerts"]:
            if alert["labels"].get("alertname") == name and alert["labels"].get("policy") == "rpo-demo":
                return alert["state"]
        return None

    try:
        until("dockvault to be ready",
              lambda: NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5).status == 200)
        until("Prometheus to scrape dockvault", lambda: query('up{job="dockvault"} == 1'))
        exposition = NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint
        manifest = json.loads(next(repo_dir.glob("rpo-demo/*/manifest.json")).read_text())
        completed = manifest["status"]["completedAt"].replace("Z", "+00:00")
        sample = until("dockvault_rpo_age_seconds", lambda: query('dockvault_rpo_age_seconds{policy="rpo-demo"}'))[0]
        age = float(sample["value"][0]) - datetime.fromisoformat(completed).timestamp()
        assert abs(float(sample["value"][1]) - age) < 2.5, (sample, age)  # the exported age is the backup's age

        # the scheduled drill's measured RTO reaches Prometheus
        rto = until("the drill's measured RTO", lambda: query('dockvault_rto_seconds{policy="rpo-demo"}'))
        assert 0 < float(rto[0]["value"][1]) < 1800
        assert until("drill time", lambda: query('dockvault_drill_last_success_timestamp_seconds{policy="rpo-demo"}'))

        until("the RPO alert to fire", lambda: alert_state("DockvaultRPOBreached") == "firing")
        firing = [a for a in get_json(f"{api}/alerts")["data"]["alerts"]
                  if a["labels"]["alertname"] == "DockvaultRPOBreached"][0]
        assert firing["labels"]["severity"] and "rpo-demo" in firing["annotations"]["summary"]

        dockvault("backup", "rpo-demo", env=cli_env)  # a fresh backup, made by hand in another process
        until("the RPO alert to resolve", lambda: alert_state("DockvaultRPOBreached") is None)
        fresh = float(query('dockvault_rpo_age_seconds{policy="rpo-demo"}')[0]["value"][1])
        assert fresh < 12
        assert float(query('dockvault_repository_backups{policy="rpo-demo"}')[0]["value"][1]) == 2
        assert alert_state("DockvaultRTOBreached") is None and alert_state("DockvaultRestoreDrillFailing") is None
    finally:
        for proc in (prometheus, run):
            proc.terminate()
        for proc in (prometheus, run):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert run.returncode == 0, (tmp_path / "run.log").read_text()

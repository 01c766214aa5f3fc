"""Every query of the Grafana dashboard, run against a real Prometheus that scrapes dockvault metrics.

A Prometheus (Debian's `prometheus` package) runs on 127.0.0.1 with a 1 s scrape and rule interval and the
alert rules of deploy/prometheus/ loaded. It scrapes a tiny HTTP server on 127.0.0.1 that plays an operator with
three policies (healthy `shop`, failing `wiki`, never backed up `legacy`) whose counters move on every scrape.
The exposition text comes from one of two sources, each run as its own Prometheus:

- `exporter`: the real exporter, when `dockvault.metrics.DockvaultMetrics` is importable: a CollectorRegistry
  with the fake facts and events, written by `prometheus_client.generate_latest` (skipped while the module does
  not exist; an import error fails);
- `handwritten`: the same operator written out by hand in the text format, which needs no dockvault code.
  It was the stand-in until the exporter landed and can go once the exporter is the only source.

Every dashboard target expression (with `$policy` set to `shop` and Grafana's interval variables to 1m) must
parse and return at least one series; the rules must evaluate without errors and raise exactly the alerts the
fake operator deserves. Nothing but 127.0.0.1 is contacted, and Prometheus is always stopped again.
Outside the harness a missing `prometheus` binary skips these tests; inside it (DOCKVAULT_HARNESS=1) it fails them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy/grafana/dockvault-dashboard.json"
RULES = REPO / "deploy/prometheus/dockvault-rules.yaml"
IN_HARNESS = os.environ.get("DOCKVAULT_HARNESS") == "1"
LOOPBACK = "127.0.0.1"
# Straight to 127.0.0.1 even when the environment names an HTTP proxy.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

DASHBOARD_POLICY = "shop"
# What Grafana would put in for its built-in variables; 1m spans many 1 s scrapes.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m"}
READY_TIMEOUT = 30  # seconds for Prometheus to start answering /-/ready
DATA_TIMEOUT = 30  # seconds for a query to return a series / the alerts to settle
STOP_TIMEOUT = 10  # seconds for Prometheus to exit after SIGTERM
HOST = "docker-1"
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


# ------------------------------------------------------------------------------------------ the fake operator --


@dataclass
class FakePolicy:
    """One policy's facts and what happens to it on every scrape (None: no event of that kind)."""

    name: str
    host: str
    target_sizes: dict[str, int]
    rpo_target_seconds: float | None
    rto_target_seconds: float | None
    last_success_age: float | None  # seconds before the test started; None: never succeeded
    last_status: int | None
    repository_backups: int
    rto_seconds: float | None
    drill_age: float | None
    backup_succeeds: bool | None = None
    restore_succeeds: bool | None = None
    retention_deletes: int = 0


def fake_policies() -> list[FakePolicy]:
    return [
        FakePolicy(
            "shop",
            HOST,
            {"db": 52_428_800, "media": 1_073_741_824},
            rpo_target_seconds=86_400,
            rto_target_seconds=1_800,
            last_success_age=3_600,
            last_status=1,
            repository_backups=7,
            rto_seconds=420,
            drill_age=2 * 86_400,
            backup_succeeds=True,
            restore_succeeds=True,
            retention_deletes=1,
        ),
        # RPO (1h) and RTO (10m) breached, backups and restores failing, last drill 10 days ago.
        FakePolicy(
            "wiki",
            HOST,
            {"files": 10_485_760},
            rpo_target_seconds=3_600,
            rto_target_seconds=600,
            last_success_age=7_200,
            last_status=0,
            repository_backups=3,
            rto_seconds=900,
            drill_age=10 * 86_400,
            backup_succeeds=False,
            restore_succeeds=False,
        ),
        # Added recently: no successful backup (so no rpo_age_seconds), never ran, no drill.
        FakePolicy(
            "legacy",
            "docker-2",
            {},
            rpo_target_seconds=86_400,
            rto_target_seconds=None,
            last_success_age=None,
            last_status=None,
            repository_backups=0,
            rto_seconds=None,
            drill_age=None,
        ),
    ]


# (alertname, policy) that must be pending or firing for fake_policies().
EXPECTED_ALERTS = {
    ("DockvaultRPOBreached", "wiki"),
    ("DockvaultBackupsFailing", "wiki"),
    ("DockvaultRestoreDrillFailing", "wiki"),
    ("DockvaultRestoreDrillStale", "wiki"),
    ("DockvaultRTOBreached", "wiki"),
}


@dataclass
class Counts:
    attempts: int = 0
    failures: int = 0
    retention_deleted: int = 0
    restores: int = 0
    restore_failures: int = 0
    backup_durations: list[float] = field(default_factory=list)
    restore_durations: list[float] = field(default_factory=list)


class MetricsSource:
    """Runs the events of one scrape and returns the exposition (content type, body)."""

    def __init__(self, policies: list[FakePolicy], started: float) -> None:
        self.policies = policies
        self.started = started
        self.scrapes = 0
        self._lock = threading.Lock()

    def scrape(self) -> tuple[str, bytes]:
        with self._lock:
            self.scrapes += 1
            for policy in self.policies:
                if policy.backup_succeeds is not None:
                    self.backup_finished(policy, policy.backup_succeeds, 30.0 + self.scrapes % 7 * 10)
                if policy.restore_succeeds is not None:
                    self.restore_finished(policy, policy.restore_succeeds, 240.0 + self.scrapes % 5 * 30)
                if policy.retention_deletes:
                    self.retention_deleted(policy, policy.retention_deletes)
            return self.exposition()

    def timestamp(self, age: float | None) -> float | None:
        return None if age is None else self.started - age

    def backup_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        raise NotImplementedError

    def restore_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        raise NotImplementedError

    def retention_deleted(self, policy: FakePolicy, count: int) -> None:
        raise NotImplementedError

    def exposition(self) -> tuple[str, bytes]:
        raise NotImplementedError


class ExporterSource(MetricsSource):
    """The real exporter: dockvault.metrics on its own registry, fed with the fake facts and events."""

    def __init__(self, policies: list[FakePolicy], started: float, metrics_module: Any) -> None:
        super().__init__(policies, started)
        from prometheus_client import CollectorRegistry

        self._module = metrics_module
        self._registry = CollectorRegistry()
        self._metrics = metrics_module.DockvaultMetrics(self._registry, self._facts)
        for policy in policies:
            self._metrics.policy_seen(policy.name, policy.host, tuple(policy.target_sizes))

    def _facts(self) -> list[Any]:
        return [
            self._module.PolicyFacts(
                policy=p.name,
                host=p.host,
                targets=tuple(p.target_sizes),
                rpo_target_seconds=p.rpo_target_seconds,
                rto_target_seconds=p.rto_target_seconds,
                last_success_timestamp=self.timestamp(p.last_success_age),
                last_status=p.last_status,
                repository_backups=p.repository_backups,
                target_sizes=dict(p.target_sizes),
                rto_seconds=p.rto_seconds,
                drill_last_success_timestamp=self.timestamp(p.drill_age),
            )
            for p in self.policies
        ]

    def backup_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        self._metrics.backup_finished(policy.name, policy.host, succeeded=succeeded, duration_seconds=duration)

    def restore_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        self._metrics.restore_finished(policy.name, policy.host, succeeded=succeeded, duration_seconds=duration)

    def retention_deleted(self, policy: FakePolicy, count: int) -> None:
        self._metrics.retention_deleted(policy.name, policy.host, count)

    def exposition(self) -> tuple[str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return CONTENT_TYPE_LATEST, generate_latest(self._registry)


class HandwrittenSource(MetricsSource):
    """The same operator written out in the Prometheus text format by hand."""

    def __init__(self, policies: list[FakePolicy], started: float) -> None:
        super().__init__(policies, started)
        self._counts = {p.name: Counts() for p in policies}

    def backup_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        counts = self._counts[policy.name]
        counts.attempts += 1
        if succeeded:
            counts.backup_durations.append(duration)
        else:
            counts.failures += 1

    def restore_finished(self, policy: FakePolicy, succeeded: bool, duration: float) -> None:
        counts = self._counts[policy.name]
        counts.restores += 1
        if succeeded:
            counts.restore_durations.append(duration)
        else:
            counts.restore_failures += 1

    def retention_deleted(self, policy: FakePolicy, count: int) -> None:
        self._counts[policy.name].retention_deleted += count

    def exposition(self) -> tuple[str, bytes]:
        now = time.time()
        lines: list[str] = []

        def family(name: str, kind: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {name.removeprefix('dockvault_').replace('_', ' ')}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{sample} {value!r}" for sample, value in samples)

        def labels(policy: FakePolicy, **extra: str) -> str:
            pairs = {"policy": policy.name, "host": policy.host, **extra}
            return "{" + ",".join(f'{key}="{value}"' for key, value in pairs.items()) + "}"

        def gauge(name: str, value_of: Callable[[FakePolicy], float | None]) -> None:
            samples = [(name + labels(p), v) for p in self.policies if (v := value_of(p)) is not None]
            family(name, "gauge", samples)

        def counter(name: str, value_of: Callable[[Counts], int]) -> None:
            family(
                name,
                "counter",
                [(f"{name}_total" + labels(p), float(value_of(self._counts[p.name]))) for p in self.policies],
            )

        def histogram(name: str, values_of: Callable[[Counts], list[float]]) -> None:
            samples: list[tuple[str, float]] = []
            for p in self.policies:
                values = values_of(self._counts[p.name])
                for bound in (*DURATION_BUCKETS, float("inf")):
                    le = "+Inf" if bound == float("inf") else f"{float(bound)!r}"
                    samples.append((f"{name}_bucket" + labels(p, le=le), float(sum(v <= bound for v in values))))
                samples.append((f"{name}_count" + labels(p), float(len(values))))
                samples.append((f"{name}_sum" + labels(p), float(sum(values))))
            family(name, "histogram", samples)

        last_success = {p.name: self.timestamp(p.last_success_age) for p in self.policies}
        gauge("dockvault_backup_last_success_timestamp_seconds", lambda p: last_success[p.name])
        gauge("dockvault_backup_last_status", lambda p: p.last_status)
        family(
            "dockvault_backup_size_bytes",
            "gauge",
            [
                ("dockvault_backup_size_bytes" + labels(p, target=target), float(size))
                for p in self.policies
                for target, size in sorted(p.target_sizes.items())
            ],
        )
        gauge("dockvault_rpo_target_seconds", lambda p: p.rpo_target_seconds)
        gauge("dockvault_rpo_age_seconds", lambda p: None if last_success[p.name] is None else now - last_success[p.name])
        gauge("dockvault_rto_target_seconds", lambda p: p.rto_target_seconds)
        gauge("dockvault_rto_seconds", lambda p: p.rto_seconds)
        gauge("dockvault_drill_last_success_timestamp_seconds", lambda p: self.timestamp(p.drill_age))
        gauge("dockvault_repository_backups", lambda p: p.repository_backups)
        family("dockvault_policies", "gauge", [("dockvault_policies", float(len(self.policies)))])
        # deprecated copies (README "Deprecated names")
        gauge("dockvault_rpo_seconds", lambda p: None if last_success[p.name] is None else now - last_success[p.name])
        gauge("dockvault_verify_last_success_timestamp_seconds", lambda p: self.timestamp(p.drill_age))
        family("dockvault_build_info", "gauge", [('dockvault_build_info{version="0.0.0+test"}', 1.0)])
        family("dockvault_facts_errors", "counter", [("dockvault_facts_errors_total", 0.0)])
        counter("dockvault_backup_attempts", lambda c: c.attempts)
        counter("dockvault_backup_failures", lambda c: c.failures)
        counter("dockvault_backup_retries", lambda c: 0)
        counter("dockvault_retention_deleted", lambda c: c.retention_deleted)
        counter("dockvault_retention_refused", lambda c: 0)
        counter("dockvault_restores", lambda c: c.restores)
        counter("dockvault_restore_failures", lambda c: c.restore_failures)
        family("dockvault_notifications_failed", "counter",
               [("dockvault_notifications_failed_total" + labels(p, channel=channel), 0.0)
                for p in self.policies for channel in ("webhook", "email")])
        histogram("dockvault_backup_duration_seconds", lambda c: c.backup_durations)
        histogram("dockvault_restore_duration_seconds", lambda c: c.restore_durations)
        return "text/plain; version=0.0.4; charset=utf-8", ("\n".join(lines) + "\n").encode()


def make_source(kind: str, started: float) -> MetricsSource:
    if kind == "handwritten":
        return HandwrittenSource(fake_policies(), started)
    if importlib.util.find_spec("dockvault.metrics") is None:
        pytest.skip("dockvault.metrics does not exist yet; the handwritten exposition stands in for it")
    module = importlib.import_module("dockvault.metrics")  # an exporter that fails to import fails the test
    if not hasattr(module, "DockvaultMetrics"):
        pytest.skip("dockvault.metrics has no DockvaultMetrics yet; the handwritten exposition stands in for it")
    return ExporterSource(fake_policies(), started, module)


def test_handwritten_exposition_matches_the_exporter() -> None:
    """Same series and values from both sources (but the exporter's `_created` timestamps and build version)."""

    def series(kind: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float | None]:
        from prometheus_client.parser import text_string_to_metric_families

        source = make_source(kind, started=1_800_000_000.0)
        source.scrape()
        _, body = source.scrape()
        return {
            (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "version"))): (
                None if sample.name in ("dockvault_rpo_age_seconds", "dockvault_rpo_seconds")  # move with the clock
                else sample.value
            )
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    exporter = series("exporter")  # skips while there is no exporter
    assert series("handwritten") == exporter


@dataclass
class MetricsServer:
    source: MetricsSource
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"


def serve_metrics(source: MetricsSource) -> MetricsServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            content_type, body = source.scrape()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-dockvault-exporter", daemon=True)
    thread.start()
    return MetricsServer(source, server, thread)


# ----------------------------------------------------------------------------------------------- prometheus --


class Prometheus:
    """A Prometheus on 127.0.0.1 with a private TSDB in `workdir`; `stop()` always ends it."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "dockvault", "static_configs": [{"targets": [target]}]}],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        for _ in range(3):  # a free port can be taken between probing and binding
            port = free_port()
            self.url = f"http://{LOOPBACK}:{port}"
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config_path}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address={LOOPBACK}:{port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self.stop()
            if "address already in use" not in self.log():
                break
        raise AssertionError(f"Prometheus did not become ready within {READY_TIMEOUT}s:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with DIRECT.open(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        return False

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with DIRECT.open(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error as JSON
            body = error.read()
            try:
                return json.loads(body)
            except ValueError:
                raise AssertionError(f"{url}: HTTP {error.code}: {body[:500]!r}") from error

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        reason = "prometheus is not installed (Debian package `prometheus`: apt-get install prometheus)"
        if IN_HARNESS:
            pytest.fail(f"inside the harness, but {reason}")
        pytest.skip(reason)
    return path


SOURCES = ("exporter", "handwritten")


@dataclass
class Setup:
    prometheus: Prometheus
    metrics: MetricsServer


@pytest.fixture(scope="module")
def setups(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Setup | str]]:
    """One Prometheus per available source, started together: Prometheus 2.42 applies new targets only every 5 s,
    so each one takes several seconds before its first scrape. A source that cannot run maps to the skip reason."""
    started: dict[str, Setup | str] = {}
    servers: list[MetricsServer] = []
    try:
        for kind in SOURCES:
            try:
                source = make_source(kind, started=time.time())
            except pytest.skip.Exception as skip:
                started[kind] = str(skip)
                continue
            servers.append(metrics := serve_metrics(source))
            workdir = tmp_path_factory.mktemp(f"prometheus-{kind}")
            started[kind] = Setup(Prometheus(prometheus_binary, workdir, metrics.address), metrics)
        # A few scrapes give rate() and increase() two samples in any 1m window.
        deadline = time.monotonic() + DATA_TIMEOUT
        for setup in started.values():
            if isinstance(setup, Setup):
                while setup.metrics.source.scrapes < 3:
                    assert time.monotonic() < deadline, (
                        f"Prometheus did not scrape {setup.metrics.address}:\n{setup.prometheus.log()}"
                    )
                    time.sleep(0.2)
        yield started
    finally:
        for setup in started.values():
            if isinstance(setup, Setup):
                setup.prometheus.stop()
        for server in servers:
            server.server.shutdown()
            server.server.server_close()


@pytest.fixture(params=SOURCES)
def setup(request: pytest.FixtureRequest, setups: dict[str, Setup | str]) -> Setup:
    chosen = setups[request.param]
    if isinstance(chosen, str):
        pytest.skip(chosen)
    return chosen


# -------------------------------------------------------------------------------------------- the dashboard --


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows keep their panels inside


def dashboard_queries() -> list[pytest.param]:
    return [
        pytest.param(target["expr"], id=f"{panel['title']} {target['refId']}")
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def promql(expr: str) -> str:
    """The expression as Grafana sends it with policy `shop` selected."""
    values = {"policy": DASHBOARD_POLICY, **GRAFANA_INTERVALS}

    def substitute(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"dashboard variable ${name} has no value in this test: {expr}"
        return values[name]

    return VARIABLE.sub(substitute, expr)


def test_dashboard_is_importable() -> None:
    board = dashboard()
    (ds_input,) = board["__inputs"]
    assert ds_input == {**ds_input, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    policy = {v["name"]: v for v in board["templating"]["list"]}["policy"]
    assert "label_values(dockvault_repository_backups, policy)" in json.dumps(policy["query"])
    panels = [p for p in all_panels(board["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in all_panels(board["panels"])}) == len(list(all_panels(board["panels"])))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    assert len(dashboard_queries()) >= 15


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_returns_series(setup: Setup, expr: str) -> None:
    query = promql(expr)
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        answer = setup.prometheus.api("query", query=query)
        assert answer["status"] == "success", f"{query}\n{answer.get('errorType')}: {answer.get('error')}"
        if answer["data"]["result"]:
            return
        assert time.monotonic() < deadline, f"no series within {DATA_TIMEOUT}s for\n{query}"
        time.sleep(0.5)


def test_rules_evaluate_without_errors(setup: Setup) -> None:
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        rules = [rule for group in setup.prometheus.api("rules")["data"]["groups"] for rule in group["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            break
        assert time.monotonic() < deadline, "the rules were not evaluated"
        time.sleep(0.5)
    assert {rule["name"] for rule in rules} == {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
    }
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken


def test_alerts_match_the_fake_operator(setup: Setup) -> None:
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        active = setup.prometheus.api("alerts")["data"]["alerts"]
        seen = {(alert["labels"]["alertname"], alert["labels"].get("policy")) for alert in active}
        if seen == EXPECTED_ALERTS:
            break
        assert time.monotonic() < deadline, f"active alerts {sorted(seen)} != expected {sorted(EXPECTED_ALERTS)}"
        time.sleep(0.5)
    for alert in active:
        for key, text in alert["annotations"].items():
            assert "{{" not in text and "error" not in text.lower(), f"{alert['labels']['alertname']} {key}: {text}"
        assert alert["labels"]["host"] == HOST

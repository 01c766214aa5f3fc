"""The HTTP endpoints on real loopback sockets (IPv4 and IPv6), and a real scrape checked by `promtool check metrics`.

promtool comes from the Debian package `prometheus`; outside the harness its absence skips the promtool test,
inside it (DOCKVAULT_HARNESS=1) the absence is a failure. Only 127.0.0.1 and ::1 are ever contacted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from dockvault import __version__
from dockvault.frontends.httpserver import MetricsServer, parse_address
from dockvault.metrics import DockvaultMetrics, PolicyFacts

IN_HARNESS = os.environ.get("DOCKVAULT_HARNESS") == "1"
NOW = 1_795_000_000.0

FACTS = (
    PolicyFacts(
        policy="myapp",
        host="local",
        targets=("db", "media"),
        rpo_target_seconds=86400.0,
        rto_target_seconds=1800.0,
        last_success_timestamp=NOW - 3600,
        last_status=0,
        repository_backups=7,
        target_sizes={"db": 123_456, "media": 9_876_543_210},
        rto_seconds=412.5,
        drill_last_success_timestamp=NOW - 86400,
        copy_last_success={"offsite": NOW - 7200, "usb": None},
    ),
    PolicyFacts(
        policy="fresh",
        host="local",
        targets=("media",),
        rpo_target_seconds=3600.0,
        rto_target_seconds=None,
        last_success_timestamp=None,
        last_status=None,
        repository_backups=0,
        target_sizes={},
        rto_seconds=None,
        drill_last_success_timestamp=None,
    ),
)

EVERY_FAMILY = (
    "dockvault_backup_last_success_timestamp_seconds",
    "dockvault_backup_last_status",
    "dockvault_backup_size_bytes",
    "dockvault_rpo_target_seconds",
    "dockvault_rpo_age_seconds",
    "dockvault_rto_target_seconds",
    "dockvault_rto_seconds",
    "dockvault_drill_last_success_timestamp_seconds",
    "dockvault_check_last_run_timestamp_seconds",
    "dockvault_check_damaged_artifacts",
    "dockvault_repository_backups",
    "dockvault_rpo_seconds",  # deprecated copies
    "dockvault_verify_last_success_timestamp_seconds",
    "dockvault_policies",
    "dockvault_build_info",
    "dockvault_facts_errors_total",
    "dockvault_backup_attempts_total",
    "dockvault_backup_failures_total",
    "dockvault_backup_retries_total",
    "dockvault_retention_deleted_total",
    "dockvault_retention_refused_total",
    "dockvault_restores_total",
    "dockvault_restore_failures_total",
    "dockvault_backup_duration_seconds",
    "dockvault_restore_duration_seconds",
    "dockvault_copy_last_success_timestamp_seconds",
    "dockvault_copy_syncs_total",
    "dockvault_copy_failures_total",
    "dockvault_notifications_failed_total",
)

# No proxy from the environment: these requests must go straight to the loopback address.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def exporter() -> tuple[CollectorRegistry, DockvaultMetrics]:
    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, lambda: FACTS, clock=lambda: NOW)
    for facts in FACTS:
        metrics.policy_seen(facts.policy, facts.host, facts.targets)
    metrics.backup_finished("myapp", "local", succeeded=True, duration_seconds=95.2)
    metrics.backup_finished("myapp", "local", succeeded=False, duration_seconds=4.0)
    metrics.retention_deleted("myapp", "local", 2)
    metrics.restore_finished("myapp", "local", succeeded=True, duration_seconds=412.5)
    metrics.restore_finished("fresh", "local", succeeded=False, duration_seconds=1.5)
    metrics.copy_finished("myapp", "local", "offsite", succeeded=True)
    metrics.copy_finished("myapp", "local", "usb", succeeded=False)
    return registry, metrics


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    started: list[MetricsServer] = []

    def start(registry: CollectorRegistry, address: str, **kwargs) -> MetricsServer:
        server = MetricsServer(registry, address, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback (::1): {exc}")


# --- endpoints ---------------------------------------------------------------------------------------------------------


def test_metrics_on_ipv4_loopback(serve):
    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0")
    assert server.port > 0
    status, headers, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'dockvault_rpo_age_seconds{host="local",policy="myapp"} 3600.0' in body
    assert 'dockvault_backup_attempts_total{host="local",policy="myapp"} 2.0' in body
    assert f'dockvault_build_info{{version="{__version__}"}} 1.0' in body


def test_metrics_on_ipv6_loopback(serve):
    ipv6_loopback()
    registry, _ = exporter()
    server = serve(registry, "[::1]:0")
    status, _, body = get(f"http://[::1]:{server.port}/metrics")
    assert status == 200
    assert 'dockvault_repository_backups{host="local",policy="myapp"} 7.0' in body
    assert get(f"http://[::1]:{server.port}/healthz")[:1] == (200,)


def test_openmetrics_when_the_scraper_asks_for_it(serve):
    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0")
    status, headers, body = get(
        f"http://127.0.0.1:{server.port}/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert "# TYPE dockvault_backup_attempts counter" in body
    assert body.endswith("# EOF\n")


def test_healthz_answers_while_the_process_serves(serve):
    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0", ready=lambda: False)
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0::2] == (200, "ok\n")


def test_readyz_follows_ready(serve):
    registry, _ = exporter()
    ready = threading.Event()
    server = serve(registry, "127.0.0.1:0", ready=ready.is_set)
    url = f"http://127.0.0.1:{server.port}/readyz"
    assert get(url)[0] == 503
    ready.set()
    assert get(url)[0::2] == (200, "ok\n")
    ready.clear()
    assert get(url)[0] == 503


def test_a_failing_readiness_check_is_not_ready(serve):
    def broken() -> bool:
        raise RuntimeError("no state store yet")

    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0", ready=broken)
    assert get(f"http://127.0.0.1:{server.port}/readyz")[0] == 503


def test_unknown_paths_are_404(serve):
    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0")
    for path in ("/", "/metricsx", "/healthz/extra", "/favicon.ico"):
        status, _, body = get(f"http://127.0.0.1:{server.port}{path}")
        assert status == 404, path
        assert "/metrics" in body


def test_a_taken_address_is_a_clear_error(serve):
    registry, _ = exporter()
    first = serve(registry, "127.0.0.1:0")
    address = f"127.0.0.1:{first.port}"
    with pytest.raises(OSError, match=f"cannot serve metrics on {address}: .*another process listens there"):
        MetricsServer(CollectorRegistry(), address).start()
    assert get(f"http://127.0.0.1:{first.port}/healthz")[0] == 200


def test_stop_closes_the_socket():
    registry, _ = exporter()
    server = MetricsServer(registry, "127.0.0.1:0")
    server.start()
    port = server.port
    server.stop()
    server.stop()  # a second stop is harmless
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


def test_scrapes_run_concurrently_with_probes(serve):
    slow = threading.Event()

    def facts():
        slow.wait(10)
        return FACTS

    registry = CollectorRegistry()
    DockvaultMetrics(registry, facts, clock=lambda: NOW)
    server = serve(registry, "127.0.0.1:0")
    scrape = threading.Thread(target=get, args=(f"http://127.0.0.1:{server.port}/metrics",))
    scrape.start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        slow.set()
        scrape.join()


# --- promtool ----------------------------------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    reason = "promtool is not installed (Debian package `prometheus`: apt-get install prometheus)"
    if IN_HARNESS:
        pytest.fail(f"inside the harness, but {reason}")
    pytest.skip(f"{reason}; `make test` (scripts/harness.sh) runs this check")


def test_promtool_accepts_a_real_scrape_with_every_family(serve):
    tool = promtool()
    registry, _ = exporter()
    server = serve(registry, "127.0.0.1:0")
    status, _, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    families = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    assert set(EVERY_FAMILY) <= families, set(EVERY_FAMILY) - families
    created = {family.removesuffix("_total") + "_created" for family in EVERY_FAMILY}  # prometheus-client adds these
    unexpected = {family for family in families if family.startswith("dockvault_")} - set(EVERY_FAMILY) - created
    assert not unexpected, f"families this test does not know, add them to EVERY_FAMILY: {unexpected}"
    command = [tool, "check", "metrics"]
    checked = subprocess.run(command, input=body, capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
    assert not (checked.stdout + checked.stderr).strip()


# --- parse_address -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("[::1]:9477", ("::1", 9477)),
        ("[fe80::1%lo]:9477", ("fe80::1%lo", 9477)),
        (":9477", ("", 9477)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1", "no port"),
        ("9477", "no port"),
        ("", "no port"),
        ("::1:9477", "put an IPv6 address in brackets"),
        ("[::1]", r"no '\]:PORT'"),
        ("[::1:9477", r"no '\]:PORT'"),
        ("[127.0.0.1]:9477", "is not an IPv6 address"),
        ("127.0.0.1:http", "the port must be a number"),
        ("127.0.0.1:", "the port must be a number"),
        ("127.0.0.1:65536", "the port must be a number"),
        ("127.0.0.1:-1", "the port must be a number"),
        ("127.0.0.1: 9477", "the port must be a number"),
        ("local host:9477", "contains spaces"),
    ],
)
def test_parse_address_rejects(text, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        parse_address(text)
    assert repr(text) in str(caught.value)
    assert "[::1]:9477" in str(caught.value)

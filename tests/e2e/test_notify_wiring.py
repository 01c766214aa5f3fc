"""A failing backup run by `dockvault run --once` posts its webhook to a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_policy

pytestmark = pytest.mark.docker


def test_failed_backup_notifies_the_webhook_without_leaking_its_token(volumes, repo_dir, cli_env):
    received: list[tuple[str, dict]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "s3cr3t-hook-token-4711"
    env = {**cli_env, "DV_TEST_HOOK": f"http://127.0.0.1:{server.server_port}/hooks/{token}?key={token}",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    missing = volumes("never-there")
    write_policy(config, name="noisy", volume=missing, repo=repo_dir,
                 extra="  notify:\n    webhooks:\n      - urlFrom: {env: DV_TEST_HOOK}\n        retries: 0\n")
    try:
        result = dockvault("run", "--once", env=env, check=False)
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert len(received) == 1
    path, payload = received[0]
    assert path == f"/hooks/{token}?key={token}"
    assert {k: payload[k] for k in ("policy", "kind", "phase", "host")} == {
        "policy": "noisy", "kind": "backup", "phase": "Failed", "host": "local"}
    assert missing in payload["message"]
    assert token not in result.stderr + result.stdout

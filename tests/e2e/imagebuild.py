"""Build the operator image (the repository's Dockerfile) on the private engine, with nothing pulled.

The base is a Debian rootfs made by mmdebstrap from the host's apt sources and `docker import`ed as
dockvault-base:<tag>; the rootfs tarball is cached by a content tag in ${DOCKVAULT_CACHE_DIR:-~/.cache/dockvault},
as the harness does for the fixture image. dockvault and its dependencies come as wheels built on the host
(`pip wheel`, the only step that talks to PyPI) and the image is built with `--network none`.

One build per test process: test_image.py and test_compose.py both call `operator_image()`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "tar", "zstd", "findutils")
BASE_REPO = "dockvault-base"
IMAGE_REPO = "dockvault-test"

_built: dict[str, str] = {}  # DOCKER_HOST -> image tag built in this process
timings: dict[str, float] = {}  # step -> seconds, for the test report


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dockvault"
    path = Path(os.environ.get("DOCKVAULT_CACHE_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mmdebstrap_argv() -> list[str]:
    # merged-usr hook: /usr merged without the usrmerge package (and the perl it pulls in); no
    # recommends, docs, man pages or locales: a smaller download, a quicker import.
    return ["mmdebstrap", "--quiet", f"--variant={BASE_VARIANT}", "--include=" + ",".join(BASE_PACKAGES),
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr", "--aptopt=APT::Install-Recommends \"false\"",
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
            BASE_SUITE, "-"]


def base_tag() -> str:
    """Content tag of the base rootfs: any change to its recipe gives a new tag and a rebuild."""
    recipe = "\n".join([*_mmdebstrap_argv(), "zstd -3"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_rootfs() -> Path:
    """The cached rootfs tarball (zstd), built with mmdebstrap when missing; concurrent builders wait on a lock."""
    tag = base_tag()
    out = cache_dir() / f"operator-base-{tag}.tar.zst"
    if out.is_file() and out.stat().st_size:
        return out
    with open(cache_dir() / "operator-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file() and out.stat().st_size:
            return out
        partial = out.with_name(f"{out.name}.tmp.{os.getpid()}")
        t0 = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="dv-mmdeb-") as tmp, open(partial, "wb") as sink, \
                    tempfile.TemporaryFile() as err:
                # No mirror argument and stdin from /dev/null: mmdebstrap reads the host's apt sources.
                mm = subprocess.Popen(_mmdebstrap_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=err, env={**os.environ, "TMPDIR": tmp})
                zst = subprocess.run(["zstd", "-q", "-T0", "-3"], stdin=mm.stdout, stdout=sink, check=False)
                mm.stdout.close()
                if mm.wait(timeout=600) != 0 or zst.returncode != 0:
                    err.seek(0)
                    raise RuntimeError(f"mmdebstrap failed ({mm.returncode}): "
                                       f"{err.read().decode(errors='replace')[-2000:]}")
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        timings["mmdebstrap"] = time.monotonic() - t0
    return out


def import_base(client) -> str:
    """dockvault-base:<tag> on the engine (imported from the cached rootfs unless already there)."""
    import docker

    image = f"{BASE_REPO}:{base_tag()}"
    try:
        client.images.get(image)
        return image
    except docker.errors.ImageNotFound:
        pass
    rootfs = base_rootfs()
    t0 = time.monotonic()
    subprocess.run(f"zstd -q -dc '{rootfs}' | docker import - '{image}' >/dev/null", shell=True, check=True,
                   stdin=subprocess.DEVNULL, timeout=300)
    timings["import"] = time.monotonic() - t0
    return image


def build_wheels(wheelhouse: Path) -> None:
    """`pip wheel . -w wheelhouse` on a copy of the sources, so the checkout gets no build/ folder."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dv-src-") as src:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO_ROOT / name, Path(src) / name)
        shutil.copytree(REPO_ROOT / "operator", Path(src) / "operator",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                                 src, "-w", str(wheelhouse)], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{result.stdout}\n{result.stderr}")
    timings["wheels"] = time.monotonic() - t0


def build_image(client, *, base: str, tag: str) -> str:
    """The repository's Dockerfile, built with BASE_IMAGE=base and network none (docker-py, the classic builder)."""
    import docker

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dv-ctx-") as ctx:
        context = Path(ctx)
        shutil.copy2(REPO_ROOT / "Dockerfile", context / "Dockerfile")
        shutil.copy2(REPO_ROOT / ".dockerignore", context / ".dockerignore")
        build_wheels(context / "wheelhouse")
        t1 = time.monotonic()
        log: list[str] = []
        for chunk in client.api.build(path=str(context), tag=tag, buildargs={"BASE_IMAGE": base},
                                      network_mode="none", pull=False, rm=True, forcerm=True, decode=True):
            if "stream" in chunk:
                log.append(chunk["stream"])
            if "error" in chunk:
                raise RuntimeError(f"docker build failed: {chunk['error']}\n{''.join(log)[-4000:]}")
        timings["docker build"] = time.monotonic() - t1
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise RuntimeError("docker build reported no error but left no image:\n" + "".join(log)[-4000:]) from None
    timings["total"] = time.monotonic() - t0
    return tag


def operator_image(client) -> str:
    """Build (once per process and engine) and return the tag of the operator image on the private engine."""
    key = os.environ.get("DOCKER_HOST", "")
    if key not in _built:
        t0 = time.monotonic()
        base = import_base(client)
        timings["base"] = time.monotonic() - t0
        tag = f"{IMAGE_REPO}:{os.getpid()}"
        build_image(client, base=base, tag=tag)
        _built[key] = tag
    return _built[key]

"""Build varied volume content and compare trees exactly: paths, types, bytes, modes, owners, links, mtimes."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

APP_LOOP = 'trap "exit 0" TERM; while true; do sleep 1; done'  # an app container that stops promptly


def volume_path(client, name: str) -> Path:
    """The volume's folder on this host (the harness engine is local)."""
    return Path(client.volumes.get(name).attrs["Mountpoint"])


def populate_volume(client, name: str, *, megabytes: int = 50, seed: int = 7) -> None:
    """Fill a fresh volume with text, binary, links, odd modes and owners, empty entries and unicode names."""
    client.volumes.create(name)
    root = volume_path(client, name)
    rnd = random.Random(seed)
    words = ["alpha", "βeta", "gamma", "デルタ", "epsilon", "zeta", "eta", "θ", "iota", "kappa"]
    budget = megabytes * 1024 * 1024
    (root / "text").mkdir()
    (root / "bin").mkdir()
    written = 0
    i = 0
    while written < budget * 0.4:
        sub = root / "text" / f"d{i % 17}" / f"e{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        body = " ".join(rnd.choice(words) for _ in range(rnd.randint(10, 4000))).encode()
        (sub / f"note-{i}.txt").write_bytes(body)
        written += len(body)
        i += 1
    for j in range(6):
        data = rnd.randbytes(rnd.randint(1, 5) * 1024 * 1024)
        (root / "bin" / f"blob{j}.bin").write_bytes(data)
        written += len(data)
    with open(root / "bin" / "sparse-ish.log", "wb") as log:
        while written < budget:
            line = f"{rnd.random():.12f} INFO request handled\n".encode() * 1000
            log.write(line)
            written += len(line)
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "empty-file").touch()
    (root / "ünïcødé ファイル 📦.txt").write_text("unicode name\n", encoding="utf-8")
    (root / ("long-" + "n" * 150)).mkdir()
    (root / ("long-" + "n" * 150) / ("deep-" + "x" * 120 + ".txt")).write_text("long path\n")
    (root / "link-rel").symlink_to("text/d1/e1")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("does/not/exist")
    os.link(root / "bin" / "blob0.bin", root / "bin" / "blob0.hardlink")
    secret = root / "private"
    secret.mkdir(mode=0o700)
    (secret / "key").write_text("not really a key\n")
    os.chmod(secret / "key", 0o600)
    os.chown(secret, 1000, 1000)
    os.chown(secret / "key", 1000, 1001)
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o4755)
    os.chmod(root / "text", 0o2775)
    os.mkfifo(root / "a-fifo")
    os.utime(root / "empty-file", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "empty-dir", ns=(1_500_000_000_000_000_000, 1_500_000_000_987_654_321))


def snapshot_volume(client, name: str) -> dict[str, tuple]:
    """Everything a restore must preserve, per path; hard links show as the same inode group."""
    root = volume_path(client, name)
    inodes: dict[int, str] = {}
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames, ""] if dirpath == str(root) else [*dirnames, *filenames]:
            path = Path(dirpath) / entry if entry else Path(dirpath)
            rel = str(path.relative_to(root)) if entry else "."
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            content = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    content += " link-group " + inodes.setdefault(st.st_ino, rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind == stat.S_IFREG else None,
                            content, mtime)
    return entries

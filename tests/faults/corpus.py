"""The malformed-input corpus: fully populated resources, every field path in them, every YAML type as a value,
and the judge that says whether dockvault's answer to a bad document is acceptable (one line per problem,
naming the file and the field, never a traceback)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import yaml
from hypothesis import strategies as st

from dockvault.api import API_VERSION
from dockvault.api.loader import LoadResult, ResourceError

AGE_RECIPIENT = "age1" + "q" * 58

# Every field of each kind set at least once, so that every path of the schema is a place to put garbage.
FULL_POLICY: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "BackupPolicy",
    "metadata": {"name": "full", "namespace": "default", "labels": {"a": "b"}, "annotations": {"c": "d"}},
    "spec": {
        "host": "local",
        "schedule": "0 3 * * *",
        "timezone": "Asia/Tokyo",
        "objectives": {"rpo": "24h", "rto": "30m"},
        "targets": [
            {"name": "media", "volume": {"name": "mydata", "quiesce": "stop"}},
            {"name": "db", "postgres": {"container": "pg", "databases": ["app"], "user": "postgres",
                                        "passwordFrom": {"env": "PGPASS"}}},
            {"name": "shop", "mysql": {"container": "maria", "passwordFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}},
        ],
        "storage": {"s3": {"bucket": "backups", "prefix": "host-a", "endpoint": "http://127.0.0.1:8333",
                           "region": "us-east-1",
                           "credentials": {"accessKeyIdFrom": {"env": "K"}, "secretAccessKeyFrom": {"file": "/s"},
                                           "sessionTokenFrom": {"env": "T"}}}},
        "copies": [{"name": "usb", "local": {"path": "/mnt/usb"}, "retention": {"keepDaily": 30}}],
        "encryption": {"age": {"recipients": [AGE_RECIPIENT], "identityFrom": {"file": "/k"}}},
        "notify": {"onSuccess": True, "onFailure": True,
                   "email": {"to": ["ops@example.org"], "from": "dv@example.org", "timeoutSeconds": 5, "retries": 1,
                             "smtp": {"host": "127.0.0.1", "port": 587, "security": "starttls",
                                      "usernameFrom": {"env": "U"}, "passwordFrom": {"env": "P"}, "caFile": "/ca"}},
                   "webhooks": [{"url": "https://127.0.0.1/hook", "timeoutSeconds": 3, "retries": 2,
                                 "headers": {"X-Token": "t"}}, {"urlFrom": {"env": "HOOK"}}]},
        "compression": {"algorithm": "zstd", "level": 3},
        "retention": {"keepLast": 3, "keepHourly": 1, "keepDaily": 7, "keepWeekly": 4, "keepMonthly": 6,
                      "keepYearly": 1, "keepWithin": "2d"},
        "drill": {"schedule": "0 5 * * 0", "checks": [{"sql": "SELECT 1", "expect": ">0", "target": "db",
                                                       "database": "app"}]},
        "suspend": False,
    },
}

FULL_RESTORE: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "RestoreRequest",
    "metadata": {"name": "full-restore"},
    "spec": {
        "policy": "full",
        "backup": {"before": "2026-11-20T00:00:00Z"},
        "source": "usb",
        "host": "host-b",
        "targets": [
            {"from": "media", "volume": {"name": "restored", "overwrite": False}},
            {"from": "db", "postgres": {"container": "pg", "database": "app2", "fromDatabase": "app", "overwrite": True,
                                        "tables": ["users"], "user": "postgres", "passwordFrom": {"env": "PGPASS"},
                                        "globals": True}},
            {"from": "shop", "mysql": {"container": "maria", "database": "shop2"}},
        ],
    },
}

FULL_DOCS = {"BackupPolicy": FULL_POLICY, "RestoreRequest": FULL_RESTORE}

Path = tuple[str | int, ...]


def field_paths(node: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path into the document: mapping keys and list indices, parents before children."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from field_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield prefix + (index,)
            yield from field_paths(value, prefix + (index,))


def replaced(doc: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def dotted(path: Path) -> str:
    """A path as the loader writes it: spec.targets[0].name."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# Every type a YAML document can hand the loader: scalars of each tag, odd floats, dates, bytes (!!binary),
# sets (!!set), nested collections, and strings that look like other things or could forge output lines.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(math.nan),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n", "latest", "0 3 * * *", "none", "~", "null", "true", "yes", "0x1F", "1e400",
                     "-1", "24h", "a\nb", "x: y", "- z", "\x00", "\u202e", "é", "../..", "/", "C:\\x", "*" * 300]),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.binary(max_size=20),
)
yaml_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()), children, max_size=4),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    ),
    max_leaves=8,
)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Writes every value above as YAML (sets as !!set, bytes as !!binary); SafeDumper alone refuses frozensets."""


_Dumper.add_representer(frozenset, lambda d, v: d.represent_set(set(v)))


def to_yaml(*docs: Any) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, allow_unicode=True, sort_keys=False)


def judge(result: LoadResult, *, file: str, field: str | None = None, max_line: int = 2000) -> list[str]:
    """The error lines of a load, asserted acceptable: each one line that names `file` (and `field` when
    given: the mutated path or one of its parents or children), bounded in length."""
    lines = [str(error) for error in result.errors]
    for error, line in zip(result.errors, lines):
        assert isinstance(error, ResourceError)
        assert "\n" not in line and "\r" not in line, f"an error spans several lines: {line!r}"
        assert line.startswith(file + ": "), f"the error does not start with its file: {line!r}"
        assert len(line) <= max_line, f"an error line of {len(line)} characters: {line[:200]!r}..."
    if field is not None and lines:
        paths = [e.path for e in result.errors]
        related = [p for p in paths if p and (p.startswith(field) or field.startswith(p) or _same_branch(p, field))]
        assert related, f"no error names the field {field}: {lines}"
    return lines


def _same_branch(a: str, b: str) -> bool:
    """Errors of a list or union member may be reported on a sibling of the mutated path (its list, or the
    one-of block it belongs to): accept a shared parent below the top level."""
    common = 0
    for x, y in zip(a.replace("[", ".[").split("."), b.replace("[", ".[").split(".")):
        if x != y:
            break
        common += 1
    return common >= 2


def safe_date(value: Any) -> bool:
    return isinstance(value, (date, datetime))

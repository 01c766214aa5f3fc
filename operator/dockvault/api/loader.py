"""Read resources from YAML files; every problem becomes an error naming file, resource and field."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .backup import Backup
from .common import API_VERSION
from .policy import BackupPolicy
from .restore import RestoreRequest

Resource = BackupPolicy | RestoreRequest | Backup
KINDS: dict[str, type[Resource]] = {"BackupPolicy": BackupPolicy, "RestoreRequest": RestoreRequest, "Backup": Backup}
YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 16 * 1024 * 1024  # ten thousand resources fit many times over; a bigger file is a mistake
MAX_MESSAGE = 300  # characters of one error's message: a huge or aliased value is cut, never repeated whole
# libyaml parses in linear time (the pure-Python scanner is quadratic on long scalars); the same safe subset.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PYTHON_YAML_MAX = 256 * 1024
MAX_DEPTH = 64  # nesting of mappings and lists; a resource needs about 8, and composing is recursive
_OPENING = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSING = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 60, 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = _SHOWN.maxtuple = 3


def shown(value: Any) -> str:
    """A bounded repr of a value taken from a document: an alias bomb or a megabyte string stays short."""
    try:
        return _SHOWN.repr(value)
    except ValueError:  # an integer too long to print in decimal
        return f"<{type(value).__name__} too large to show>"


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "... (cut)"


@dataclass(frozen=True)
class ResourceError:
    file: str
    kind: str | None
    name: str | None
    path: str
    message: str

    def __str__(self) -> str:
        who = " ".join(part for part in (self.kind, self.name) if part)
        parts = [self.file, who, self.path, self.message]
        return ": ".join(part for part in parts if part)


@dataclass(frozen=True)
class Loaded:
    resource: Resource
    file: str


@dataclass
class LoadResult:
    items: list[Loaded] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)
    warnings: list[ResourceError] = field(default_factory=list)  # valid, but with deprecated names

    def extend(self, other: LoadResult) -> None:
        self.items.extend(other.items)
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)


# Old names that keep working, by kind: field path -> its new name. Documented in README "Deprecated names".
DEPRECATED_FIELDS: dict[str, dict[tuple[str, ...], str]] = {
    "BackupPolicy": {("spec", "verify"): "spec.drill"},
}


def deprecated_fields(kind: str, doc: Any) -> list[tuple[str, str]]:
    """(old path, new name) for every deprecated field the document uses."""
    found = []
    for path, new in DEPRECATED_FIELDS.get(kind, {}).items():
        node = doc
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append((".".join(path), new))
    return found


def format_loc(loc: Iterable[Any]) -> str:
    """A pydantic error location as a dotted path; a key that is not printable (a newline in a mistyped YAML key)
    is shown quoted, so an error stays one line."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            name = name if name.isprintable() else repr(name)
            out += f".{name}" if out else name
    return out


def parse_document(doc: Any, *, file: str) -> LoadResult:
    result = LoadResult()
    if doc is None:
        return result
    if not isinstance(doc, dict):
        result.errors.append(ResourceError(file, None, None, "", "a document must be a mapping with apiVersion and kind"))
        return result
    kind = doc.get("kind")
    meta = doc.get("metadata")
    raw_name = meta.get("name") if isinstance(meta, dict) else None
    # Only a well-formed name goes into messages verbatim; anything else could forge output lines.
    plain = isinstance(raw_name, str) and raw_name.isprintable() and not any(c.isspace() for c in raw_name)
    name = raw_name if plain and len(raw_name) <= MAX_MESSAGE else (shown(raw_name) if raw_name else None)
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(KINDS)
        result.errors.append(ResourceError(file, None, name, "kind", f"unknown kind {shown(kind)}; expected one of {known}"))
        return result
    if doc.get("apiVersion") != API_VERSION:
        msg = f"unsupported apiVersion {shown(doc.get('apiVersion'))}; expected {API_VERSION}"
        result.errors.append(ResourceError(file, kind, name, "apiVersion", msg))
        return result
    try:
        resource = KINDS[kind].model_validate(doc, by_alias=True, by_name=False)  # YAML uses the CRD's field names
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = _short(err["msg"].removeprefix("Value error, "))
            result.errors.append(ResourceError(file, kind, name, _short(format_loc(err["loc"])), msg))
        return result
    result.items.append(Loaded(resource, file))
    for old, new in deprecated_fields(kind, doc):
        result.warnings.append(ResourceError(file, kind, name, old, f"deprecated; rename it to {new}"))
    return result


def _nesting_problem(text: str) -> ResourceError | None:
    """Walk the parser's events (iterative, unlike composing) to refuse a nesting that would exhaust the stack."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, _OPENING):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                return ResourceError("", None, None, f"line {mark.line + 1}, column {mark.column + 1}",
                                     f"invalid YAML: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, _CLOSING):
            depth -= 1
    return None


def load_text(text: str, *, file: str) -> LoadResult:
    result = LoadResult()
    try:
        too_deep = _nesting_problem(text)
        if too_deep is not None:
            result.errors.append(ResourceError(file, None, None, too_deep.path, too_deep.message))
            return result
        docs = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except yaml.YAMLError as exc:
        if len(text) <= _PYTHON_YAML_MAX:  # PyYAML's own parser words the problem better: ask it again
            try:
                list(yaml.load_all(text, Loader=yaml.SafeLoader))
            except yaml.YAMLError as again:
                exc = again
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        result.errors.append(ResourceError(file, None, None, where, _short(f"invalid YAML: {_one_line(problem)}")))
        return result
    except (ValueError, OverflowError) as exc:  # a scalar its tag cannot hold: 2026-13-45, !!int abc, 10**5000
        problem = str(exc).split("; use sys.")[0]  # Python's hint for huge integers is not for our users
        result.errors.append(ResourceError(file, None, None, "", _short(f"invalid YAML: {_one_line(problem)}")))
        return result
    for doc in docs:
        result.extend(parse_document(doc, file=file))
    return result


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_file(path: Path, *, display: str | None = None) -> LoadResult:
    name = display or str(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return LoadResult(errors=[ResourceError(name, None, None, "", f"file is larger than "
                                                    f"{MAX_FILE_BYTES // 2**20} MiB; split it or remove what is not "
                                                    f"a dockvault resource")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[ResourceError(name, None, None, "", _short(f"cannot read: {exc}"))])
    return load_text(text, file=name)


def yaml_files(directory: Path) -> list[Path]:
    """YAML files of a config directory, sorted; hidden files and editor temporaries are ignored."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in YAML_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def load_paths(paths: Iterable[Path]) -> LoadResult:
    result = LoadResult()
    for path in paths:
        if path.is_dir():
            for file in yaml_files(path):
                result.extend(load_file(file))
        elif path.exists():
            result.extend(load_file(path))
        else:
            result.errors.append(ResourceError(str(path), None, None, "", "no such file or directory"))
    return result

"""Which entries of a pg_dump archive make up a table: chosen from the archive's own dependency graph.

`pg_restore --table` restores a table's definition and rows, nothing else. A table a DBA would trust also has
its owned sequences and column defaults, its constraints, indexes, triggers, rules, policies, comments and
grants, and the foreign keys between it and the tables around it. A verbose listing (`pg_restore --list
--verbose`) records for every entry the entries it depends on, so an index or a foreign key is found by what
it depends on, never by parsing its SQL. Pure functions: a listing comes in as text, a plan goes out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

# What `tables:` may name.
RELATIONS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})
# Parts of a relation: restored when they depend on a named relation and every other relation they need
# (the other table of a foreign key, a sequence in a default) is restored too or exists in the database.
PARTS = frozenset({"SEQUENCE", "DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "INDEX", "TRIGGER",
                   "RULE", "POLICY", "ROW SECURITY", "STATISTICS", "PUBLICATION TABLE"})
# Additions to other entries (rows, a sequence's value, comments, grants): restored when all they depend on is.
ADDITIONS = frozenset({"TABLE DATA", "MATERIALIZED VIEW DATA", "SEQUENCE OWNED BY", "SEQUENCE SET", "COMMENT",
                       "ACL", "SECURITY LABEL", "TABLE ATTACH", "INDEX ATTACH"})
# Objects a relation's definition uses. A live database has them; a new one gets those the plan needs.
DEFINITIONS = frozenset({
    "SCHEMA", "EXTENSION", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE", "COLLATION",
    "CONVERSION", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "CAST", "PROCEDURAL LANGUAGE", "TRANSFORM",
    "ACCESS METHOD", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE", "FOREIGN DATA WRAPPER", "SERVER", "USER MAPPING"})
# How a restore's message names what came along, in this order.
_LABELS = {"TABLE DATA": "rows", "MATERIALIZED VIEW DATA": "rows", "SEQUENCE": "sequences", "SEQUENCE OWNED BY":
           "sequences", "SEQUENCE SET": "sequences", "DEFAULT": "defaults", "CONSTRAINT": "constraints",
           "CHECK CONSTRAINT": "constraints", "INDEX": "indexes", "INDEX ATTACH": "indexes", "TRIGGER": "triggers",
           "RULE": "rules", "FK CONSTRAINT": "foreign keys", "POLICY": "policies", "ROW SECURITY": "row-level security",
           "STATISTICS": "statistics", "COMMENT": "comments", "ACL": "grants", "SECURITY LABEL": "security labels",
           "PUBLICATION TABLE": "publications", "TABLE ATTACH": "partitions"}
_OTHER_KINDS = frozenset({"DATABASE", "DATABASE PROPERTIES", "ENCODING", "STDSTRINGS", "SEARCHPATH", "BLOBS",
                          "BLOB", "LARGE OBJECT", "DEFAULT ACL", "EVENT TRIGGER", "PUBLICATION",
                          "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION", "CONSTRAINT TRIGGER"})
# Longest first: "TABLE DATA public t" is TABLE DATA of t, not a TABLE in schema DATA.
_KINDS = sorted(RELATIONS | PARTS | ADDITIONS | DEFINITIONS | _OTHER_KINDS, key=len, reverse=True)
_ENTRY = re.compile(r"(\d+); (\d+) (\d+) (.*)")
_DEPENDS = ";\tdepends on:"


class PlanError(ValueError):
    """The request names something the archive cannot satisfy; the message says what and what to do."""


@dataclass(frozen=True)
class Entry:
    """One line of a verbose listing. `name` is pg_dump's tag: "orders" for a table, "orders id" for a default,
    "orders orders_pkey" for a constraint, "TABLE orders" for a comment or grant."""

    id: int
    kind: str
    schema: str
    name: str
    owner: str
    deps: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"{self.kind.lower()} {self.schema + '.' if self.schema else ''}{self.name}"


def parse_listing(text: str) -> list[Entry]:
    """Entries of `pg_restore --list --verbose`, in archive order.

    A line is "ID; TABLEOID OID KIND SCHEMA NAME OWNER", space-separated: names with spaces are read right, a
    schema or owner with a space is not (pg_restore prints them unquoted).
    """
    entries: list[Entry] = []
    for line in text.splitlines():
        if line.startswith(_DEPENDS) and entries:
            entries[-1] = replace(entries[-1], deps=tuple(int(d) for d in line[len(_DEPENDS):].split()))
            continue
        match = _ENTRY.fullmatch(line)
        if match is None:
            continue
        rest = match[4]
        kind = next((k for k in _KINDS if rest.startswith(k + " ")), rest.split(" ", 1)[0])
        fields = rest[len(kind) + 1:].split(" ")
        schema, owner = fields[0], fields[-1] if len(fields) > 1 else ""
        entries.append(Entry(int(match[1]), kind, "" if schema == "-" else schema, " ".join(fields[1:-1]), owner))
    return entries


@dataclass(frozen=True)
class TablePlan:
    """The entries to restore, in archive order (a dump read from a pipe must be restored in that order)."""

    entries: tuple[Entry, ...]
    relations: tuple[Entry, ...]
    left_out: tuple[str, ...]  # objects in the archive that depend on the relations, not restored: name them too

    def use_list(self) -> str:
        """The `pg_restore --use-list` file: one entry id a line."""
        return "".join(f"{e.id}\n" for e in self.entries)

    def summary(self) -> str:
        """What came along with the relations, in words: "rows, sequences, constraints, indexes and grants"."""
        labels = {_LABELS.get(e.kind, e.kind.lower() + "s") for e in self.entries if e not in self.relations}
        order = list(dict.fromkeys(_LABELS.values()))
        words = sorted(labels, key=lambda w: (order.index(w) if w in order else len(order), w))
        return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else ""


def find_relation(entries: Iterable[Entry], name: str) -> Entry:
    """The table, view or materialized view `name` ("orders" in any schema, or "schema.orders")."""
    relations = [e for e in entries if e.kind in RELATIONS]
    qualified = [e for e in relations if e.schema and name == f"{e.schema}.{e.name}"]
    found = qualified or [e for e in relations if e.name == name]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(f"{e.schema}.{e.name}" for e in found)
        raise PlanError(f"{name!r} names relations in several schemas ({names}); write schema.name")
    have = ", ".join(f"{e.schema}.{e.name}" for e in relations[:20]) or "none"
    more = f" and {len(relations) - 20} more" if len(relations) > 20 else ""
    raise PlanError(f"the dump has no table, view or materialized view {name!r} (it has: {have}{more})")


def plan_tables(entries: list[Entry], names: Iterable[str], *, existing: Collection[tuple[str, str]],
                new_database: bool) -> TablePlan:
    """Choose the named relations and everything that belongs to them.

    `existing` holds the (schema, name) of the relations already in the destination database: a foreign key
    to or from another table is restored only when that table is restored too or exists. Into a new database
    the schemas, types, functions and standalone sequences the chosen entries use come along.
    """
    by_id = {e.id: e for e in entries}
    roots = {find_relation(entries, name).id for name in names}
    chosen = set(roots)

    def relation_deps(entry: Entry) -> list[Entry]:
        return [by_id[d] for d in entry.deps if d in by_id and by_id[d].kind in RELATIONS | {"SEQUENCE"}]

    def missing(entry: Entry) -> list[Entry]:
        return [r for r in relation_deps(entry) if r.id not in chosen and (r.schema, r.name) not in existing]

    def belongs(entry: Entry, needed: set[int]) -> bool:
        if entry.kind in ADDITIONS:  # pg_dump may list ids it did not archive (section boundaries): not needed
            known = [d for d in entry.deps if d in by_id]
            return bool(known) and all(d in chosen for d in known)
        if entry.kind in PARTS and any(d in roots for d in entry.deps):
            return not missing(entry)
        standalone = entry.kind in DEFINITIONS or (entry.kind == "SEQUENCE" and not relation_deps(entry))
        return new_database and standalone and entry.id in needed

    grew = True
    while grew:
        needed = {d for i in chosen for d in by_id[i].deps} if new_database else set()
        added = {e.id for e in entries if e.id not in chosen and belongs(e, needed)}
        chosen |= added
        grew = bool(added)

    return TablePlan(entries=tuple(e for e in entries if e.id in chosen),
                     relations=tuple(e for e in entries if e.id in roots),
                     left_out=tuple(_left_out(entries, chosen, roots, missing)))


def _left_out(entries: list[Entry], chosen: set[int], roots: set[int],
              missing: Callable[[Entry], list[Entry]]) -> list[str]:
    """What depends on the chosen relations or their parts but is not restored, and views on those, in turn."""
    owned = {e.id for e in entries if e.id in chosen and (e.id in roots or e.kind in PARTS)}
    left: dict[int, str] = {}
    for entry in entries:
        if entry.id in chosen or entry.kind in ADDITIONS or not any(d in owned for d in entry.deps):
            continue
        needs = missing(entry) if entry.kind in PARTS else []
        left[entry.id] = entry.describe() + (f" (needs {', '.join(r.describe() for r in needs)})" if needs else "")
    grew = True
    while grew:
        views = {e.id: e.describe() for e in entries if e.kind in RELATIONS and e.id not in chosen
                 and e.id not in left and any(d in left for d in e.deps)}
        left |= views
        grew = bool(views)
    order = {e.id: n for n, e in enumerate(entries)}
    return [left[i] for i in sorted(left, key=order.__getitem__)]

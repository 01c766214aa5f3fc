"""Choosing a table's archive entries: from a real pg_dump listing, and from any listing hypothesis makes up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.sources.pgtoc import (
    ADDITIONS,
    DEFINITIONS,
    PARTS,
    RELATIONS,
    Entry,
    PlanError,
    parse_listing,
    plan_tables,
)

# `pg_restore --list --verbose` of tests/integration/test_databases.py's PG_SHOP, plus a table of the same name in
# another schema (with an identity column), a standalone sequence in a default, a view on the view and a
# materialized view with an index.
LISTING = """;
; Archive created at 2026-11-26 01:57:58 UTC
;     dbname: shop
;     TOC Entries: 58
;     Compression: -1
;     Dump Version: 1.14-0
;     Format: CUSTOM
;     Integer: 4 bytes
;     Offset: 8 bytes
;     Dumped from database version: 15.20 (Debian 15.20-0+deb12u1)
;     Dumped by pg_dump version: 15.20 (Debian 15.20-0+deb12u1)
;
;
; Selected TOC Entries:
;
3419; 0 0 ENCODING - ENCODING 
3420; 0 0 STDSTRINGS - STDSTRINGS 
3421; 0 0 SEARCHPATH - SEARCHPATH 
3422; 1262 16451 DATABASE - shop postgres
6; 2615 16506 SCHEMA - audit postgres
228; 1255 16499 FUNCTION public touch() postgres
223; 1259 16508 TABLE audit orders postgres
;\tdepends on: 6
222; 1259 16507 SEQUENCE audit orders_id_seq postgres
;\tdepends on: 223 6
218; 1259 16464 TABLE public orders postgres
3423; 0 0 COMMENT public TABLE orders postgres
;\tdepends on: 218
3424; 0 0 COMMENT public COLUMN orders.total postgres
;\tdepends on: 218
3425; 0 0 ACL public TABLE orders postgres
;\tdepends on: 218
221; 1259 16502 VIEW public open_orders postgres
;\tdepends on: 218 218 218 218
3426; 0 0 COMMENT public VIEW open_orders postgres
;\tdepends on: 221
226; 1259 16530 VIEW public big_open_orders postgres
;\tdepends on: 221 221 221
216; 1259 16453 TABLE public customers postgres
215; 1259 16452 SEQUENCE public customers_id_seq postgres
;\tdepends on: 216
3427; 0 0 SEQUENCE OWNED BY public customers_id_seq postgres
;\tdepends on: 215
224; 1259 16520 SEQUENCE public invoice_no postgres
225; 1259 16521 TABLE public invoices postgres
;\tdepends on: 224
220; 1259 16485 TABLE public order_items postgres
219; 1259 16484 SEQUENCE public order_items_id_seq postgres
;\tdepends on: 220
3428; 0 0 SEQUENCE OWNED BY public order_items_id_seq postgres
;\tdepends on: 219
227; 1259 16534 MATERIALIZED VIEW public order_totals postgres
;\tdepends on: 218 218
217; 1259 16463 SEQUENCE public orders_id_seq postgres
;\tdepends on: 218
3429; 0 0 SEQUENCE OWNED BY public orders_id_seq postgres
;\tdepends on: 217
3430; 0 0 ACL public SEQUENCE orders_id_seq postgres
;\tdepends on: 217
3231; 2604 16456 DEFAULT public customers id postgres
;\tdepends on: 215 216 216
3235; 2604 16488 DEFAULT public order_items id postgres
;\tdepends on: 220 219 220
3232; 2604 16467 DEFAULT public orders id postgres
;\tdepends on: 217 218 218
3413; 0 16508 TABLE DATA audit orders postgres
;\tdepends on: 223
3407; 0 16453 TABLE DATA public customers postgres
;\tdepends on: 216
3415; 0 16521 TABLE DATA public invoices postgres
;\tdepends on: 225
3411; 0 16485 TABLE DATA public order_items postgres
;\tdepends on: 220
3409; 0 16464 TABLE DATA public orders postgres
;\tdepends on: 218
3431; 0 0 SEQUENCE SET audit orders_id_seq postgres
;\tdepends on: 222
3432; 0 0 SEQUENCE SET public customers_id_seq postgres
;\tdepends on: 215
3433; 0 0 SEQUENCE SET public invoice_no postgres
;\tdepends on: 224
3434; 0 0 SEQUENCE SET public order_items_id_seq postgres
;\tdepends on: 219
3435; 0 0 SEQUENCE SET public orders_id_seq postgres
;\tdepends on: 217
3252; 2606 16514 CONSTRAINT audit orders orders_pkey postgres
;\tdepends on: 223
3240; 2606 16462 CONSTRAINT public customers customers_name_key postgres
;\tdepends on: 216
3242; 2606 16460 CONSTRAINT public customers customers_pkey postgres
;\tdepends on: 216
3250; 2606 16493 CONSTRAINT public order_items order_items_pkey postgres
;\tdepends on: 220
3246; 2606 16474 CONSTRAINT public orders orders_pkey postgres
;\tdepends on: 218
3248; 2606 16476 CONSTRAINT public orders orders_reference_key postgres
;\tdepends on: 218
3253; 1259 16540 INDEX public order_totals_customer postgres
;\tdepends on: 227
3243; 1259 16482 INDEX public orders_customer_placed postgres
;\tdepends on: 218 218
3244; 1259 16483 INDEX public orders_open postgres
;\tdepends on: 218 218
3436; 0 0 COMMENT public INDEX orders_open postgres
;\tdepends on: 3244
3258; 2620 16500 TRIGGER public orders orders_touch postgres
;\tdepends on: 218 228
3256; 2606 16515 FK CONSTRAINT audit orders orders_order_id_fkey postgres
;\tdepends on: 218 3246 223
3257; 2606 16525 FK CONSTRAINT public invoices invoices_order_id_fkey postgres
;\tdepends on: 218 225 3246
3255; 2606 16494 FK CONSTRAINT public order_items order_items_order_id_fkey postgres
;\tdepends on: 218 3246 220
3254; 2606 16477 FK CONSTRAINT public orders orders_customer_id_fkey postgres
;\tdepends on: 3242 218 216
3404; 0 16464 ROW SECURITY public orders postgres
;\tdepends on: 218
3405; 3256 16501 POLICY public orders orders_open_only postgres
;\tdepends on: 218 218
3416; 0 16534 MATERIALIZED VIEW DATA public order_totals postgres
;\tdepends on: 227 3418
"""

ENTRIES = parse_listing(LISTING)
RELATION_NAMES = {(e.schema, e.name) for e in ENTRIES if e.kind in RELATIONS | {"SEQUENCE"}}


def ids(plan) -> set[int]:
    return {e.id for e in plan.entries}


def test_listing_lines_parse_into_kind_schema_name_owner_and_dependencies():
    by_id = {e.id: e for e in ENTRIES}
    assert len(ENTRIES) == 58
    assert by_id[3419] == Entry(3419, "ENCODING", "", "ENCODING", "")
    assert by_id[218] == Entry(218, "TABLE", "public", "orders", "postgres")
    assert by_id[3409] == Entry(3409, "TABLE DATA", "public", "orders", "postgres", (218,))
    assert by_id[3424] == Entry(3424, "COMMENT", "public", "COLUMN orders.total", "postgres", (218,))
    assert by_id[3254] == Entry(3254, "FK CONSTRAINT", "public", "orders orders_customer_id_fkey", "postgres",
                                (3242, 218, 216))
    assert by_id[3416].kind == "MATERIALIZED VIEW DATA" and by_id[227].kind == "MATERIALIZED VIEW"
    assert by_id[3429].kind == "SEQUENCE OWNED BY" and by_id[3435].kind == "SEQUENCE SET"


def test_a_table_comes_with_everything_that_is_its_own_and_the_keys_of_tables_that_exist():
    live = RELATION_NAMES - {("public", "orders"), ("public", "orders_id_seq"), ("public", "order_items")}
    plan = plan_tables(ENTRIES, ["public.orders"], existing=live, new_database=False)
    assert ids(plan) == {
        218, 3409,                    # the table and its rows
        217, 3429, 3435, 3232,        # its serial: sequence, OWNED BY, value, nextval default
        3246, 3248,                   # primary key, unique (the check is part of the table)
        3243, 3244, 3436,             # indexes, and the comment on one
        3258,                         # trigger
        3254, 3256, 3257,             # foreign keys to customers, and from audit.orders and invoices
        3404, 3405,                   # row-level security and its policy
        3423, 3424, 3425, 3430,       # comments on the table and a column; grants on the table and sequence
    }
    assert [e.id for e in plan.relations] == [218]
    assert plan.left_out == ("view public.open_orders", "view public.big_open_orders",
                             "materialized view public.order_totals",
                             "fk constraint public.order_items order_items_order_id_fkey (needs table public.order_items)")
    assert plan.use_list().splitlines() == [str(e.id) for e in plan.entries]
    assert [e.id for e in plan.entries] == [e.id for e in ENTRIES if e.id in ids(plan)]  # archive order
    assert plan.summary() == ("rows, sequences, defaults, constraints, indexes, triggers, foreign keys, policies, "
                              "row-level security, comments and grants")


def test_into_a_new_database_the_functions_and_schemas_come_along_and_missing_tables_keys_do_not():
    plan = plan_tables(ENTRIES, ["public.orders"], existing=(), new_database=True)
    assert 228 in ids(plan)  # touch(), for the trigger
    assert not ids(plan) & {3254, 3255, 3256, 3257}
    assert "fk constraint public.orders orders_customer_id_fkey (needs table public.customers)" in plan.left_out

    audit = plan_tables(ENTRIES, ["audit.orders"], existing=(), new_database=True)
    assert ids(audit) == {6, 223, 222, 3413, 3431, 3252}  # schema, table, identity sequence and value, key, rows
    assert audit.left_out == ("fk constraint audit.orders orders_order_id_fkey (needs table public.orders)",)


def test_a_standalone_sequence_is_used_where_it_lives_and_brought_into_a_new_database():
    live = plan_tables(ENTRIES, ["invoices"], existing=RELATION_NAMES - {("public", "invoices")}, new_database=False)
    assert {225, 3415, 3257} <= ids(live) and not ids(live) & {224, 3433}  # invoice_no is shared: left alone
    new = plan_tables(ENTRIES, ["invoices", "public.orders"], existing=(), new_database=True)
    assert {224, 3433, 3257} <= ids(new)


def test_views_and_materialized_views_can_be_named():
    view = plan_tables(ENTRIES, ["open_orders"], existing=RELATION_NAMES, new_database=False)
    assert ids(view) == {221, 3426} and view.left_out == ("view public.big_open_orders",)
    both = plan_tables(ENTRIES, ["open_orders", "big_open_orders"], existing=RELATION_NAMES, new_database=False)
    assert ids(both) == {221, 3426, 226} and both.left_out == ()
    # Its data entry also lists an id pg_dump did not archive (a section boundary): it comes along anyway.
    matview = plan_tables(ENTRIES, ["order_totals"], existing=RELATION_NAMES, new_database=False)
    assert ids(matview) == {227, 3253, 3416}


@pytest.mark.parametrize(("name", "problem"), [
    ("orders", "'orders' names relations in several schemas (audit.orders, public.orders); write schema.name"),
    ("ordres", "the dump has no table, view or materialized view 'ordres' (it has: audit.orders, public.orders, "),
    ("public.orders_id_seq", "no table, view or materialized view 'public.orders_id_seq'"),
])
def test_names_that_match_nothing_or_more_than_one_relation_are_refused(name, problem):
    with pytest.raises(PlanError) as refused:
        plan_tables(ENTRIES, [name], existing=(), new_database=False)
    assert problem in str(refused.value)


def test_names_with_spaces_and_entries_pg_restore_prints_without_owner():
    text = ("7; 1259 100 TABLE public my orders alice\n"
            "8; 0 100 TABLE DATA public my orders alice\n;\tdepends on: 7\n"
            "9; 2606 101 CONSTRAINT public my orders my orders_pkey alice\n;\tdepends on: 7\n"
            "10; 0 0 COMMENT public TABLE \"my orders\" alice\n;\tdepends on: 7\n"
            "11; 0 0 SEARCHPATH - SEARCHPATH \n")
    entries = parse_listing(text)
    assert [e.name for e in entries] == ["my orders", "my orders", "my orders my orders_pkey", 'TABLE "my orders"',
                                         "SEARCHPATH"]
    assert ids(plan_tables(entries, ["my orders"], existing=(), new_database=False)) == {7, 8, 9, 10}


# Listings hypothesis makes up: entries in dependency order (pg_dump's archive order), of every kind the plan
# treats differently, depending on earlier entries or on ids that are not archived.
KINDS = sorted(RELATIONS | PARTS | ADDITIONS | DEFINITIONS | {"DATABASE"})
NAMES = st.text(st.sampled_from("abo_ 1"), min_size=1, max_size=6).filter(lambda n: n.strip() == n)


@st.composite
def listings(draw) -> list[Entry]:
    entries: list[Entry] = []
    for index in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(KINDS))
        earlier = [e.id for e in entries]
        deps = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
        deps += draw(st.lists(st.just(99999), max_size=1))
        entries.append(Entry(index + 1, kind, draw(st.sampled_from(["public", "s"])), draw(NAMES), "o", tuple(deps)))
    return entries


def render(entries: list[Entry]) -> str:
    return "".join(f"{e.id}; 1 2 {e.kind} {e.schema} {e.name} {e.owner}\n"
                   + (f";\tdepends on: {' '.join(map(str, e.deps))}\n" if e.deps else "") for e in entries)


@settings(max_examples=300, deadline=None)
@given(listings(), st.data())
def test_any_plan_touches_only_the_named_relations_and_what_is_theirs(entries, data):
    assert parse_listing(render(entries)) == entries
    relations = [e for e in entries if e.kind in RELATIONS]
    if not relations:
        return
    roots = data.draw(st.lists(st.sampled_from(relations), min_size=1, max_size=3, unique_by=lambda e: e.id))
    names = [f"{e.schema}.{e.name}" for e in roots]
    if any(len([e for e in relations if (e.schema, e.name) == (r.schema, r.name)]) > 1 for r in roots):
        with pytest.raises(PlanError):
            plan_tables(entries, names, existing=(), new_database=False)
        return
    existing = {(e.schema, e.name) for e in data.draw(st.lists(st.sampled_from(entries), max_size=5))}
    new_database = data.draw(st.booleans())
    plan = plan_tables(entries, names, existing=existing, new_database=new_database)
    chosen = ids(plan)
    root_ids = {e.id for e in roots}

    assert [e.id for e in plan.entries] == [e.id for e in entries if e.id in chosen]
    assert {e.id for e in plan.relations} == root_ids
    for entry in entries:
        depends_on_chosen = any(d in chosen for d in entry.deps)
        if entry.id in chosen and entry.id not in root_ids:
            assert entry.kind not in RELATIONS  # never another table or view
            assert entry.kind in PARTS | ADDITIONS or new_database
            assert depends_on_chosen or (new_database and any(entry.id in c.deps for c in plan.entries))
        known = [d for d in entry.deps if any(d == e.id for e in entries)]
        if entry.kind in ADDITIONS and known and all(d in chosen for d in known):
            assert entry.id in chosen  # rows, comments and grants follow what they belong to
        if entry.id not in chosen and entry.kind not in ADDITIONS and any(d in root_ids for d in entry.deps):
            assert any(line.startswith(entry.describe()) for line in plan.left_out)

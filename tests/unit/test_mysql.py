"""MySQL restores' pure parts: foreign keys read from information_schema, and the query that finds orphaned rows."""

from __future__ import annotations

from dockvault.sources.mysql import ForeignKey, foreign_keys


def test_columns_group_into_foreign_keys_per_table_and_constraint():
    rows = ["fk", "order_items", "order_id", "orders", "id",
            "fk", "shipments", "order_id", "orders", "id",  # the same name on another table: another key
            "pair", "lines", "a", "parent", "x",
            "pair", "lines", "b", "parent", "y"]
    assert foreign_keys(rows) == [
        ForeignKey("fk", "order_items", ("order_id",), "orders", ("id",)),
        ForeignKey("fk", "shipments", ("order_id",), "orders", ("id",)),
        ForeignKey("pair", "lines", ("a", "b"), "parent", ("x", "y")),
    ]


def test_orphans_query_quotes_every_name_and_skips_keys_with_nulls():
    key = ForeignKey("k", "child`; DROP", ("a`b", "c"), "par ent", ("x", "y"))
    assert key.orphans_query() == (
        "SELECT COUNT(*) FROM `child``; DROP` c WHERE c.`a``b` IS NOT NULL AND c.`c` IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM `par ent` p WHERE p.`x` = c.`a``b` AND p.`y` = c.`c`);")

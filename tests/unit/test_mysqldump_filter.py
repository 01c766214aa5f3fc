"""The mysqldump section filter: a table's structure, rows and triggers, in any chunking, in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.sources.mysqldump_filter import PROLOGUE, UNNAMED, sections, select_tables, tables_in

# mariadb-dump 10.11 --single-transaction --routines --events --triggers of a small shop.
DUMP = r'''/*M!999999\- enable the sandbox mode */ 
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: shop
-- ------------------------------------------------------
-- Server version	10.11.19-MariaDB-0+deb12u1

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET @OLD_CHARACTER_SET_RESULTS=@@CHARACTER_SET_RESULTS */;
/*!40101 SET @OLD_COLLATION_CONNECTION=@@COLLATION_CONNECTION */;
/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;

--
-- Table structure for table `customers`
--

DROP TABLE IF EXISTS `customers`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `customers` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `name` varchar(100) NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

--
-- Dumping data for table `customers`
--

LOCK TABLES `customers` WRITE;
/*!40000 ALTER TABLE `customers` DISABLE KEYS */;
INSERT INTO `customers` VALUES
(1,'a'),
(2,'b');
/*!40000 ALTER TABLE `customers` ENABLE KEYS */;
UNLOCK TABLES;

--
-- Temporary table structure for view `open_orders`
--

DROP TABLE IF EXISTS `open_orders`;
/*!50001 DROP VIEW IF EXISTS `open_orders`*/;
SET @saved_cs_client     = @@character_set_client;
SET character_set_client = utf8mb4;
/*!50001 CREATE VIEW `open_orders` AS SELECT
 NULL AS `id`,
 NULL AS `total` */;
SET character_set_client = @saved_cs_client;

--
-- Table structure for table `order_items`
--

DROP TABLE IF EXISTS `order_items`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `order_items` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `order_id` int(11) NOT NULL,
  `sku` varchar(20) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `items_order_fk` (`order_id`),
  CONSTRAINT `items_order_fk` FOREIGN KEY (`order_id`) REFERENCES `orders` (`id`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

--
-- Dumping data for table `order_items`
--

LOCK TABLES `order_items` WRITE;
/*!40000 ALTER TABLE `order_items` DISABLE KEYS */;
INSERT INTO `order_items` VALUES
(1,1,'x'),
(2,2,'y');
/*!40000 ALTER TABLE `order_items` ENABLE KEYS */;
UNLOCK TABLES;

--
-- Table structure for table `orders`
--

DROP TABLE IF EXISTS `orders`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `orders` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `customer_id` int(11) NOT NULL,
  `total` decimal(12,2) NOT NULL,
  `status` varchar(20) NOT NULL DEFAULT 'new',
  `updated` datetime DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `orders_customer_fk` (`customer_id`),
  KEY `orders_status_idx` (`status`),
  CONSTRAINT `orders_customer_fk` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`),
  CONSTRAINT `orders_total_ck` CHECK (`total` >= 0)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci COMMENT='customer orders';
/*!40101 SET character_set_client = @saved_cs_client */;

--
-- Dumping data for table `orders`
--

LOCK TABLES `orders` WRITE;
/*!40000 ALTER TABLE `orders` DISABLE KEYS */;
INSERT INTO `orders` VALUES
(1,1,10.00,'new',NULL),
(2,2,20.00,'new',NULL);
/*!40000 ALTER TABLE `orders` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET @saved_cs_client      = @@character_set_client */ ;
/*!50003 SET @saved_cs_results     = @@character_set_results */ ;
/*!50003 SET @saved_col_connection = @@collation_connection */ ;
/*!50003 SET character_set_client  = utf8mb3 */ ;
/*!50003 SET character_set_results = utf8mb3 */ ;
/*!50003 SET collation_connection  = utf8mb3_general_ci */ ;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW SET NEW.updated = NOW() 
*/;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
/*!50003 SET character_set_client  = @saved_cs_client */ ;
/*!50003 SET character_set_results = @saved_cs_results */ ;
/*!50003 SET collation_connection  = @saved_col_connection */ ;

--
-- Dumping events for database 'shop'
--

--
-- Dumping routines for database 'shop'
--

--
-- Final view structure for view `open_orders`
--

/*!50001 DROP VIEW IF EXISTS `open_orders`*/;
/*!50001 SET @saved_cs_client          = @@character_set_client */;
/*!50001 SET @saved_cs_results         = @@character_set_results */;
/*!50001 SET @saved_col_connection     = @@collation_connection */;
/*!50001 SET character_set_client      = utf8mb3 */;
/*!50001 SET character_set_results     = utf8mb3 */;
/*!50001 SET collation_connection      = utf8mb3_general_ci */;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */
/*!50001 VIEW `open_orders` AS select `orders`.`id` AS `id`,`orders`.`total` AS `total` from `orders` where `orders`.`status` = 'new' */;
/*!50001 SET character_set_client      = @saved_cs_client */;
/*!50001 SET character_set_results     = @saved_cs_results */;
/*!50001 SET collation_connection      = @saved_col_connection */;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;
/*!40014 SET UNIQUE_CHECKS=@OLD_UNIQUE_CHECKS */;
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;
/*!40101 SET CHARACTER_SET_RESULTS=@OLD_CHARACTER_SET_RESULTS */;
/*!40101 SET COLLATION_CONNECTION=@OLD_COLLATION_CONNECTION */;
/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;

-- Dump completed on 2026-11-26  1:51:08
'''.encode()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_one_table_keeps_the_prologue_and_its_structure_rows_and_triggers():
    out = b"".join(select_tables([DUMP], ["orders"])).decode()
    assert out.startswith("/*M!999999\\- enable the sandbox mode */")
    assert "FOREIGN_KEY_CHECKS=0" in out and "SET NAMES utf8mb4" in out
    assert "DROP TABLE IF EXISTS `orders`;" in out and "CREATE TABLE `orders` (" in out
    assert "CONSTRAINT `orders_customer_fk` FOREIGN KEY" in out and "CONSTRAINT `orders_total_ck` CHECK" in out
    assert "INSERT INTO `orders` VALUES" in out and "TRIGGER orders_touch BEFORE UPDATE ON orders" in out
    assert "DELIMITER ;\n" in out.split("TRIGGER orders_touch")[1]
    for other in ("CREATE TABLE `customers`", "INSERT INTO `customers`", "`order_items`", "`open_orders`",
                  "Dumping routines", "Dump completed"):
        assert other not in out


def test_a_view_is_both_of_its_sections_and_names_are_exact():
    out = b"".join(select_tables([DUMP], ["open_orders", "order"])).decode()
    assert "Temporary table structure for view `open_orders`" in out and "VIEW `open_orders` AS select" in out
    assert "`orders`.`id`" in out and "CREATE TABLE" not in out  # `order` matches no table, not `orders`
    assert b"".join(select_tables([DUMP], [])) == DUMP.split(b"-- Table structure")[0]


def test_tables_in_lists_tables_and_views_and_stops_once_it_has_seen_enough():
    assert tables_in([DUMP]) == {"customers", "open_orders", "order_items", "orders"}
    lines = DUMP.splitlines(keepends=True)
    header = lines.index(b"-- Table structure for table `customers`\n")

    def reading() -> Iterator[bytes]:
        for number, line in enumerate(lines):
            assert number <= header, "read past the section it was waiting for"
            yield line

    assert tables_in(reading(), until=["customers"]) == {"customers"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(DUMP)), max_size=40))
def test_any_chunking_gives_the_same_script(cuts):
    chunks = chunked(DUMP, cuts)
    assert b"".join(piece for _, piece in sections(chunks)) == DUMP
    assert b"".join(select_tables(chunks, ["orders"])) == b"".join(select_tables([DUMP], ["orders"]))
    assert b"".join(select_tables(chunks, ["open_orders"])) == b"".join(select_tables([DUMP], ["open_orders"]))


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1, max_size=12),
       st.lists(st.integers(0, 400), max_size=8))
def test_any_table_name_is_found_by_its_quoted_header(name, cuts):
    quoted = "`" + name.replace("`", "``") + "`"
    script = (f"SET x=1;\n--\n-- Table structure for table {quoted}\n--\nCREATE TABLE {quoted} (a int);\n"
              f"--\n-- Table structure for table `zz`\n--\nCREATE TABLE `zz` (b int);\n").encode()
    chunks = chunked(script, cuts)
    assert tables_in(chunks) == {name, "zz"}
    out = b"".join(select_tables(chunks, [name])).decode()
    assert f"CREATE TABLE {quoted}" in out and "`zz` (b int)" not in out and out.startswith("SET x=1;")


def test_sections_are_tagged_prologue_tables_and_unnamed():
    tags = {tag for tag, _ in sections([DUMP])}
    assert tags == {PROLOGUE, UNNAMED, b"`customers`", b"`open_orders`", b"`order_items`", b"`orders`"}


def test_memory_stays_bounded_on_long_lines_and_comments_do_not_open_sections():
    row = b"(" + b"1," * 3_000_000 + b"1)"
    script = (b"SET x=1;\n-- Table structure for table `big`\nINSERT INTO `big` VALUES " + row + b";\n"
              + b"-- " + b"-" * 5000 + b"\n"  # a long comment line: never a header
              + b"-- Table structure for table `small`\nCREATE TABLE `small` (a int);\n"
              + b"-- Dumping data for table `small`\nCREATE TRIGGER t BEFORE INSERT ON small FOR EACH ROW\n"
              + b"-- Table structure for a comment inside a trigger\nSET NEW.a = 1;\n")
    size = 1 << 16
    chunks = [script[i:i + size] for i in range(0, len(script), size)]
    pieces = list(sections(chunks))
    assert max(len(p) for _, p in pieces) <= size + 1024
    out = b"".join(select_tables(chunks, ["small"]))
    assert out == (b"SET x=1;\n-- Table structure for table `small`\nCREATE TABLE `small` (a int);\n"
                   b"-- Dumping data for table `small`\nCREATE TRIGGER t BEFORE INSERT ON small FOR EACH ROW\n"
                   b"-- Table structure for a comment inside a trigger\nSET NEW.a = 1;\n")
    assert b"".join(select_tables(chunks, ["big"])).endswith(b"-" * 5000 + b"\n")


@pytest.mark.parametrize("ending", [b"", b"\n"])
def test_a_script_that_ends_inside_a_header_line_still_ends(ending):
    script = b"SET x=1;\n-- Table structure for table `a`" + ending
    assert b"".join(select_tables([script[:-3], script[-3:]], ["a"])) == script

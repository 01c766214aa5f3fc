# Database server fixtures (pg_server, ...): see tests/dbfixtures.py.
from __future__ import annotations

from tests.dbfixtures import pg_database, pg_server  # noqa: F401

# Database server fixtures for the end-to-end tests (see tests/dbfixtures.py); `cli_env` is in tests/conftest.py.
from tests.dbfixtures import maria_database, maria_server, pg_database, pg_server  # noqa: F401  (fixtures)

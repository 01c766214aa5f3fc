# Database server fixtures (pg_server, maria_server, pg_database, maria_database): see tests/dbfixtures.py.
# Imported rather than listed in `pytest_plugins`, which pytest refuses in a conftest below the rootdir
# when the run starts from `tests/` (collection error "Defining 'pytest_plugins' in a non-top-level conftest").
from tests.dbfixtures import maria_database, maria_server, pg_database, pg_server  # noqa: F401

from __future__ import annotations

import os

import pytest

from tests.dbfixtures import maria_database, maria_server, pg_database, pg_server  # noqa: F401  (fixtures)


@pytest.fixture
def cli_env(tmp_path, test_image) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DOCKVAULT_STATE_DIR=str(tmp_path / "state"), DOCKVAULT_HELPER_IMAGE=test_image,
               DOCKVAULT_CONFIG_DIR=str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    return env

"""passwordFrom: the model's exactly-one rule, and resolving a password (secretKeyRef through a pluggable reader)."""

from __future__ import annotations

import re
import threading

import pytest
from dockvault import credentials
from dockvault.api.common import PasswordFrom
from dockvault.api.policy import BackupPolicy
from dockvault.credentials import SecretError, mask, resolve_password, secret_reader
from pydantic import ValidationError

from tests.unit.builders import policy_doc


def ref(name: str = "pg-credentials", key: str = "password") -> PasswordFrom:
    return PasswordFrom.model_validate({"secretKeyRef": {"name": name, "key": key}})


# --- the model ------------------------------------------------------------------------------------

def test_secret_key_ref_is_camel_case_and_round_trips():
    source = ref()
    assert source.secret_key_ref is not None and source.secret_key_ref.name == "pg-credentials"
    assert source.to_dict() == {"secretKeyRef": {"name": "pg-credentials", "key": "password"}}


@pytest.mark.parametrize("doc", [
    {},
    {"env": "PW", "file": "/run/pw"},
    {"env": "PW", "secretKeyRef": {"name": "s", "key": "k"}},
    {"file": "/run/pw", "secretKeyRef": {"name": "s", "key": "k"}},
])
def test_exactly_one_of_env_file_or_secret_key_ref(doc):
    with pytest.raises(ValidationError, match="passwordFrom needs exactly one of env, file or secretKeyRef"):
        PasswordFrom.model_validate(doc)


@pytest.mark.parametrize(("doc", "message"), [
    ({"name": "Not_A_Name", "key": "k"}, "is not a valid resource name (DNS-1123 subdomain)"),
    ({"name": "s", "key": ""}, "at least 1 character"),
    ({"name": "s"}, "Field required"),
    ({"key": "k"}, "Field required"),
    ({"name": "s", "key": "k", "namespace": "other"}, "Extra inputs are not permitted"),
])
def test_secret_key_ref_fields(doc, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        PasswordFrom.model_validate({"secretKeyRef": doc})


def test_a_policy_accepts_secret_key_ref_on_a_database_target():
    doc = policy_doc()
    doc["spec"]["targets"] = [{"name": "db", "postgres": {
        "container": "pg", "passwordFrom": {"secretKeyRef": {"name": "pg-credentials", "key": "password"}}}}]
    policy = BackupPolicy.model_validate(doc)
    assert policy.spec.targets[0].postgres.password_from.secret_key_ref.key == "password"


# --- resolving --------------------------------------------------------------------------------------

def test_without_a_reader_secret_key_ref_is_a_clear_error():
    with pytest.raises(SecretError) as caught:
        resolve_password(ref(), {}, ("POSTGRES_PASSWORD",))
    assert str(caught.value) == ("passwordFrom.secretKeyRef: Secrets can only be read in Kubernetes mode "
                                 "(dockvault kube); use env or file")


def test_a_reader_resolves_and_the_value_is_masked():
    calls = []

    def reader(name, key):
        calls.append((name, key))
        return "s3cr3t-from-k8s"

    with secret_reader(reader):
        assert resolve_password(ref(), {"POSTGRES_PASSWORD": "container-pw"}, ("POSTGRES_PASSWORD",)) == "s3cr3t-from-k8s"
    assert calls == [("pg-credentials", "password")]
    assert mask("connect failed for s3cr3t-from-k8s") == f"connect failed for {credentials.MASK}"
    assert credentials.current_secret_reader() is None  # reset when the block ends


def test_reader_errors_pass_through_and_other_failures_name_secret_and_key_only():
    def missing(name, key):
        raise SecretError(f"passwordFrom.secretKeyRef: Secret ns1/{name} has no key {key!r}")

    with secret_reader(missing), pytest.raises(SecretError, match="Secret ns1/pg-credentials has no key 'password'"):
        resolve_password(ref(), {}, ())

    def broken(name, key):
        raise RuntimeError("value was hunter2-leaked")

    with secret_reader(broken), pytest.raises(SecretError) as caught:
        resolve_password(ref(), {}, ())
    assert "'password' of Secret 'pg-credentials'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_reader_does_not_leak_into_other_threads():
    seen = []
    with secret_reader(lambda name, key: "x" * 8):
        worker = threading.Thread(target=lambda: seen.append(credentials.current_secret_reader()))
        worker.start()
        worker.join()
    assert seen == [None]


def test_env_and_file_still_work(tmp_path, monkeypatch):
    monkeypatch.setenv("DV_UNIT_PW", "from-env-pw")
    assert resolve_password(PasswordFrom(env="DV_UNIT_PW"), {}, ()) == "from-env-pw"
    (tmp_path / "pw").write_text("from-file-pw\n")
    assert resolve_password(PasswordFrom(file=str(tmp_path / "pw")), {}, ()) == "from-file-pw"
    assert resolve_password(None, {"MYSQL_ROOT_PASSWORD": "ctr-pw"}, ("MYSQL_ROOT_PASSWORD",)) == "ctr-pw"

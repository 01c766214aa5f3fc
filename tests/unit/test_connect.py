"""dockvault.engine.connect without an engine: how DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_TLS / DOCKER_CERT_PATH
are read (as the docker CLI reads them), the errors that name a missing file, and the REQUESTS_CA_BUNDLE trap."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import docker
import pytest
from docker.api.client import APIClient
from docker.tls import TLSConfig

from dockvault.engine import connect
from dockvault.engine.connect import DockerEnvError, client_from_env, settings_from_env
from tests.second_engine import free_port, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A client's ca.pem, cert.pem and key.pem (made once: generating keys is the slow part)."""
    _, client = make_certificates(tmp_path_factory.mktemp("tls"))
    return client


@pytest.fixture
def cert_path(certs, tmp_path) -> Path:
    """A private copy of `certs` that a test may change."""
    return Path(shutil.copytree(certs, tmp_path / "certs"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No DOCKER_* settings, and a HOME without ~/.docker, whatever the shell running the tests has."""
    for name in ("DOCKER_HOST", "DOCKER_TLS", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# ------------------------------------------------------------------------------ DOCKER_HOST --
@pytest.mark.parametrize(("raw", "tls", "expected"), [
    ("", False, "unix:///var/run/docker.sock"),
    ("", True, "tcp://localhost:2376"),
    ("unix:///run/user/1000/docker.sock", False, "unix:///run/user/1000/docker.sock"),
    ("tcp://10.0.0.5", True, "tcp://10.0.0.5:2376"),
    ("tcp://10.0.0.5", False, "tcp://10.0.0.5:2375"),
    ("tcp://10.0.0.5:", True, "tcp://10.0.0.5:2376"),
    ("tcp://10.0.0.5:4243", True, "tcp://10.0.0.5:4243"),
    ("tcp://", False, "tcp://localhost:2375"),
    ("tcp://[::1]", True, "tcp://[::1]:2376"),
    ("tcp://[::1]:9999", True, "tcp://[::1]:9999"),
    ("docker.example:2376", True, "tcp://docker.example:2376"),
    ("docker.example", False, "tcp://docker.example:2375"),
    ("ssh://me@docker.example", True, "ssh://me@docker.example"),
])
def test_docker_host_is_completed_like_the_cli(raw, tls, expected):
    assert connect._normalise_host(raw, tls) == expected


def test_no_settings_mean_the_local_socket_without_tls():
    assert settings_from_env({}) == connect.DockerSettings(host="unix:///var/run/docker.sock")


def test_settings_come_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/x.sock")
    assert settings_from_env().host == "unix:///tmp/x.sock"


def test_an_unusable_docker_host_is_a_clear_error():
    with pytest.raises(DockerEnvError, match=r"DOCKER_HOST='tcp://docker.example:port' is not usable"):
        settings_from_env({"DOCKER_HOST": "tcp://docker.example:port"})


# ---------------------------------------------------------------------------------- TLS --
def test_tls_verify_uses_the_three_files_of_docker_cert_path(cert_path):
    settings = settings_from_env({"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1",
                                  "DOCKER_CERT_PATH": str(cert_path)})
    assert settings.host == "tcp://127.0.0.1:2376"
    assert settings.tls == connect.TLSFiles(
        verify=True, ca_cert=str(cert_path / "ca.pem"),
        client_cert=(str(cert_path / "cert.pem"), str(cert_path / "key.pem")),
        cert_path=str(cert_path), cert_path_source=f"DOCKER_CERT_PATH={cert_path}")


@pytest.mark.parametrize("value", ["1", "true", "0", "false", "no"])
def test_any_non_empty_docker_tls_verify_means_verify_as_for_the_cli(cert_path, value):
    settings = settings_from_env({"DOCKER_HOST": "tcp://h:1", "DOCKER_TLS_VERIFY": value,
                                  "DOCKER_CERT_PATH": str(cert_path)})
    assert settings.tls is not None and settings.tls.verify


def test_an_empty_docker_tls_verify_means_no_tls(cert_path):
    settings = settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": str(cert_path)})
    assert settings == connect.DockerSettings(host="tcp://h:2375")


def test_docker_cert_path_alone_does_not_turn_tls_on_as_for_the_cli(cert_path):
    """docker.from_env would use TLS without verification here; the docker CLI speaks plain HTTP."""
    assert settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_CERT_PATH": str(cert_path)}).tls is None


def test_docker_tls_means_tls_without_verification_and_needs_no_ca(cert_path):
    (cert_path / "ca.pem").unlink()
    settings = settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS": "1", "DOCKER_CERT_PATH": str(cert_path)})
    assert settings.host == "tcp://h:2376"
    assert settings.tls is not None and not settings.tls.verify and settings.tls.ca_cert is None
    assert settings.tls.client_cert == (str(cert_path / "cert.pem"), str(cert_path / "key.pem"))


def test_the_cert_path_defaults_to_dot_docker_in_home(certs, tmp_path):
    shutil.copytree(certs, tmp_path / "home" / ".docker")
    settings = settings_from_env({"DOCKER_TLS_VERIFY": "1"})
    assert settings.host == "tcp://localhost:2376"
    assert settings.tls is not None and settings.tls.ca_cert == str(tmp_path / "home" / ".docker" / "ca.pem")
    assert "DOCKER_CERT_PATH is unset" in settings.tls.cert_path_source


def test_the_cert_path_may_start_with_a_tilde(certs, tmp_path):
    shutil.copytree(certs, tmp_path / "home" / "remote")
    settings = settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "~/remote"})
    assert settings.tls is not None and settings.tls.ca_cert == str(tmp_path / "home" / "remote" / "ca.pem")


@pytest.mark.parametrize("host", ["unix:///var/run/docker.sock", "ssh://me@docker.example"])
def test_tls_settings_do_not_apply_to_sockets_or_ssh(host):
    """A DOCKER_TLS_VERIFY left in the shell must not break a socket (docker.from_env fails on the missing files)."""
    settings = settings_from_env({"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/nonexistent"})
    assert settings == connect.DockerSettings(host=host)


def test_without_cert_and_key_no_client_certificate_is_sent_as_for_the_cli(cert_path):
    (cert_path / "cert.pem").unlink()
    (cert_path / "key.pem").unlink()
    settings = settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)})
    assert settings.tls is not None and settings.tls.client_cert is None and settings.tls.verify


# --------------------------------------------------------------------------- file errors --
def test_a_missing_ca_names_the_file_and_the_variables(cert_path):
    (cert_path / "ca.pem").unlink()
    with pytest.raises(DockerEnvError) as caught:
        settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)})
    assert str(caught.value) == (f"DOCKER_TLS_VERIFY is set, but the CA certificate {cert_path / 'ca.pem'} "
                                 f"does not exist (DOCKER_CERT_PATH={cert_path})")


def test_a_missing_ca_in_the_default_directory_says_so(tmp_path):
    with pytest.raises(DockerEnvError) as caught:
        settings_from_env({"DOCKER_TLS_VERIFY": "1"})
    assert f"{tmp_path / 'home' / '.docker' / 'ca.pem'} does not exist" in str(caught.value)
    assert "DOCKER_CERT_PATH is unset, so" in str(caught.value)


@pytest.mark.parametrize(("missing", "present", "what"), [("cert.pem", "key.pem", "certificate"),
                                                          ("key.pem", "cert.pem", "key")])
def test_a_client_certificate_without_its_key_or_the_reverse_names_the_missing_one(cert_path, missing, present,
                                                                                   what):
    (cert_path / missing).unlink()
    with pytest.raises(DockerEnvError) as caught:
        settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)})
    message = str(caught.value)
    assert f"the TLS client {what} {cert_path / missing} does not exist while {cert_path / present} does" in message
    assert f"DOCKER_CERT_PATH={cert_path}" in message


def test_a_directory_in_place_of_a_file_is_named(cert_path):
    (cert_path / "ca.pem").unlink()
    (cert_path / "ca.pem").mkdir()
    with pytest.raises(DockerEnvError, match=r"the CA certificate .*/ca.pem is not a file \(DOCKER_CERT_PATH="):
        settings_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)})


def test_client_from_env_checks_the_files_before_connecting(cert_path, monkeypatch):
    (cert_path / "ca.pem").unlink()
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(cert_path))
    with pytest.raises(DockerEnvError, match="ca.pem does not exist"):
        client_from_env()


def test_env_errors_are_docker_exceptions():
    """Callers that catch the SDK's errors (Engine.from_env) catch these too."""
    assert issubclass(DockerEnvError, docker.errors.DockerException)


@pytest.mark.skipif(importlib.util.find_spec("paramiko") is not None, reason="paramiko is installed")
def test_ssh_without_paramiko_says_what_to_install(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@127.0.0.1")
    with pytest.raises(DockerEnvError, match=r"needs the paramiko package.*docker\[ssh\]"):
        client_from_env()


@pytest.mark.parametrize("tls", [False, True])
def test_an_engine_that_does_not_answer_is_not_a_settings_error(cert_path, monkeypatch, tls):
    """Connection refused may well pass (the engine restarting): the SDK's error, not DockerEnvError."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    if tls:
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(cert_path))
    with pytest.raises(docker.errors.DockerException) as caught:
        client_from_env(timeout=5)
    assert not isinstance(caught.value, DockerEnvError)


# ------------------------------------------------------------------- the REQUESTS_CA_BUNDLE trap --
def _api(cls, cert_path: Path, *, verify: bool = True) -> APIClient:
    """An API client that never connects (an explicit version skips the /version request)."""
    ca = str(cert_path / "ca.pem")
    tls = TLSConfig(client_cert=(str(cert_path / "cert.pem"), str(cert_path / "key.pem")), ca_cert=ca,
                    verify=ca if verify else False)
    return cls(base_url="tcp://127.0.0.1:2376", version="1.41", tls=tls)


def test_plain_docker_py_lets_requests_ca_bundle_replace_the_ca(certs, monkeypatch):
    """The trap (docker-py issue #2433), pinned here so that a change in docker-py or requests shows."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle-from-the-environment.pem")
    api = _api(APIClient, certs)
    assert api.verify == str(certs / "ca.pem")
    settings = api.merge_environment_settings("https://127.0.0.1:2376/version", {}, None, None, None)
    assert settings["verify"] == "/etc/bundle-from-the-environment.pem"


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_tls_client_keeps_the_ca_of_docker_cert_path(certs, monkeypatch, variable):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv(variable, "/etc/bundle-from-the-environment.pem")
    api = _api(connect._TLSAPIClient, certs)
    settings = api.merge_environment_settings("https://127.0.0.1:2376/version", {}, None, None, None)
    assert settings["verify"] == str(certs / "ca.pem")
    assert settings["cert"] == (str(certs / "cert.pem"), str(certs / "key.pem"))


def test_the_tls_client_stays_unverified_when_asked(certs, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle-from-the-environment.pem")
    api = _api(connect._TLSAPIClient, certs, verify=False)
    assert api.merge_environment_settings("https://127.0.0.1:2376/", {}, None, None, None)["verify"] is False


def test_the_tls_client_cannot_be_made_to_trust_the_environment_again(certs, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle-from-the-environment.pem")
    api = _api(connect._TLSAPIClient, certs)
    api.trust_env = True  # what requests.Session.__init__ does before APIClient's first request
    assert api.trust_env is False
    assert api.merge_environment_settings("https://127.0.0.1:2376/", {}, None, None, None)["verify"] == str(
        certs / "ca.pem")


def test_the_tls_client_ignores_proxy_variables_like_the_cli(certs, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = "https://docker.example:2376/version"
    assert _api(APIClient, certs).merge_environment_settings(url, {}, None, None, None)["proxies"]
    assert not _api(connect._TLSAPIClient, certs).merge_environment_settings(url, {}, None, None, None)["proxies"]


def test_importing_connect_imports_little_beyond_docker():
    import subprocess
    import sys

    code = ("import sys; import docker; before = set(sys.modules); import dockvault.engine.connect; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    added = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert {name for name in added if not name.startswith("dockvault")} <= {
        "dataclasses", "inspect", "ast", "_ast", "dis", "opcode", "_opcode", "importlib.util"}

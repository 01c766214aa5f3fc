"""A Docker client configured from the environment the way the docker CLI reads it.

Why not `docker.from_env()`: docker-py builds its TLS settings from DOCKER_CERT_PATH, but requests then
lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace them on every request (docker-py issue #2433):
`Session.merge_environment_settings` swaps a per-request `verify` of None (docker-py never passes one)
for the bundle named in the environment, and the per-request value beats the session's `verify`. On
hosts that export REQUESTS_CA_BUNDLE (common: it points at the system CAs), `docker.from_env()` then
checks a TLS engine's certificate against the public CAs instead of DOCKER_CERT_PATH/ca.pem and fails
with CERTIFICATE_VERIFY_FAILED, while the docker CLI, which never reads those variables, connects.
The same swap silently turns "TLS without verification" (DOCKER_TLS) into verification.

`client_from_env` reads the variables as the CLI does (cli/flags/options.go, cli/context/docker/load.go):

- DOCKER_HOST: unix://, tcp://, ssh:// (needs paramiko, as for docker.from_env), ...; unset or empty:
  unix:///var/run/docker.sock, or tcp://localhost:2376 when TLS is on. tcp:// without a port gets 2376
  with TLS and 2375 without; an address without a scheme is tcp.
- DOCKER_TLS_VERIFY: any non-empty value (even "0") means TLS, verifying the engine against ca.pem.
- DOCKER_TLS: any non-empty value means TLS without verifying the engine.
- DOCKER_CERT_PATH (default ~/.docker): ca.pem, and the client certificate cert.pem + key.pem, which
  are optional as for the CLI (both or neither). Unlike docker.from_env, DOCKER_CERT_PATH alone does
  not turn TLS on (the CLI does not either). TLS settings only apply to TCP hosts, never to sockets
  or ssh, so DOCKER_TLS_VERIFY left over in a shell does not break unix:// (it does with from_env).
- DOCKER_CONTEXT and DOCKER_API_VERSION are not read; the API version is negotiated ("auto").

With TLS, nothing else in the process environment is consulted, as with the CLI, whose TLS transport
has neither environment CAs nor a proxy: see `_TLSAPIClient`.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import docker
import docker.errors
import docker.utils
from docker.api.client import APIClient
from docker.constants import IS_WINDOWS_PLATFORM
from docker.tls import TLSConfig
from requests.exceptions import SSLError as RequestsSSLError  # requests: loaded by docker anyway

DEFAULT_UNIX_HOST = "unix:///var/run/docker.sock"
DEFAULT_TLS_HOST = "tcp://localhost:2376"
TLS_PORT = 2376
PLAIN_PORT = 2375
_SOCKET_SCHEMES = ("unix", "npipe", "fd", "ssh")  # TLS settings never apply to these


class DockerEnvError(docker.errors.DockerException):
    """The Docker settings in the environment are wrong, or do not match the engine (TLS): trying again
    later will not help. A DockerException, so code catching the SDK's errors catches it too."""


@dataclass(frozen=True)
class TLSFiles:
    verify: bool                     # check the engine's certificate against `ca_cert`
    ca_cert: str | None              # None when not verifying
    client_cert: tuple[str, str] | None  # (cert.pem, key.pem), None when there are neither
    cert_path: str                   # the directory, for messages
    cert_path_source: str            # "DOCKER_CERT_PATH=..." or "DOCKER_CERT_PATH is unset, so ~/.docker"


@dataclass(frozen=True)
class DockerSettings:
    """What the environment asks for; `tls` is None for plain connections (sockets, ssh, tcp without TLS)."""

    host: str                        # normalised DOCKER_HOST
    tls: TLSFiles | None = None


def _scheme(host: str) -> str:
    return host.split("://", 1)[0].lower() if "://" in host else ""


def _normalise_host(raw: str, tls: bool) -> str:
    """DOCKER_HOST as the CLI completes it (opts.ParseHost): defaults, tcp for bare addresses, default ports."""
    host = raw.strip()
    if not host:
        return DEFAULT_TLS_HOST if tls else DEFAULT_UNIX_HOST
    if "://" not in host and not host.startswith("/"):
        host = f"tcp://{host}"
    if _scheme(host) != "tcp":
        return host
    rest = host[len("tcp://"):]
    address, slash, path = rest.partition("/")
    if address.startswith("["):                      # [::1]:2376
        bracket = address.find("]")
        has_port = bracket != -1 and address[bracket + 1:].startswith(":")
    else:
        has_port = ":" in address
    if not address:
        address = "localhost"
    if not has_port:
        address = f"{address}:{TLS_PORT if tls else PLAIN_PORT}"
    elif address.endswith(":"):
        address = f"{address}{TLS_PORT if tls else PLAIN_PORT}"
    return f"tcp://{address}{slash}{path}"


def settings_from_env(environ: Mapping[str, str] | None = None) -> DockerSettings:
    """Parse and check the DOCKER_* variables (no connection); DockerEnvError names a missing file and its variable."""
    env = os.environ if environ is None else environ
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    tls = verify or bool(env.get("DOCKER_TLS"))
    host = _normalise_host(env.get("DOCKER_HOST") or "", tls)
    try:
        docker.utils.parse_host(host, IS_WINDOWS_PLATFORM, tls=tls)
    except (docker.errors.DockerException, ValueError) as exc:  # ValueError: urllib.parse on a bad port
        raise DockerEnvError(f"DOCKER_HOST={env.get('DOCKER_HOST')!r} is not usable: {exc}") from exc
    if not tls or _scheme(host) in _SOCKET_SCHEMES:
        return DockerSettings(host=host)

    raw_path = env.get("DOCKER_CERT_PATH") or ""
    if raw_path:
        cert_path = os.path.expanduser(raw_path)
        source = f"DOCKER_CERT_PATH={raw_path}"
    else:
        cert_path = os.path.join(os.path.expanduser("~"), ".docker")
        source = f"DOCKER_CERT_PATH is unset, so {cert_path}"
    why = "DOCKER_TLS_VERIFY is set" if verify else "DOCKER_TLS is set"
    ca, cert, key = (os.path.join(cert_path, name) for name in ("ca.pem", "cert.pem", "key.pem"))

    ca_cert = None
    if verify:
        _require_file(ca, f"{why}, but the CA certificate {ca} ", source)
        ca_cert = ca
    present = {path: os.path.exists(path) for path in (cert, key)}
    if present[cert] != present[key]:
        missing, other = (cert, key) if not present[cert] else (key, cert)
        raise DockerEnvError(f"{why}, but the TLS client {'certificate' if missing == cert else 'key'} {missing} "
                             f"does not exist while {other} does ({source}); both are needed, or neither")
    client_cert = None
    if present[cert]:
        _require_file(cert, f"the TLS client certificate {cert} ", source)
        _require_file(key, f"the TLS client key {key} ", source)
        client_cert = (cert, key)
    return DockerSettings(host=host, tls=TLSFiles(verify=verify, ca_cert=ca_cert, client_cert=client_cert,
                                                  cert_path=cert_path, cert_path_source=source))


def _require_file(path: str, subject: str, source: str) -> None:
    if not os.path.exists(path):
        raise DockerEnvError(f"{subject}does not exist ({source})")
    if not os.path.isfile(path):
        raise DockerEnvError(f"{subject}is not a file ({source})")
    if not os.access(path, os.R_OK):
        raise DockerEnvError(f"{subject}is not readable by this process (uid {os.getuid()}; {source})")


class _TLSAPIClient(APIClient):
    """An APIClient whose TLS settings the process environment cannot change.

    requests reads the environment when `trust_env` is true: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace
    `verify` on every request (see the module docstring), plus proxies and ~/.netrc. Setting
    `client.api.trust_env = False` afterwards is not enough: with version="auto", APIClient.__init__
    already sends its first request (GET /version) and requests.Session.__init__ has just set
    `trust_env = True`. This property holds from the first request on and cannot be turned back on.
    Ignoring proxies is what the CLI does with TLS too (its TLS http.Transport has no Proxy).
    Plain tcp:// clients keep requests' defaults: the CLI honours HTTP(S)_PROXY / NO_PROXY there.
    """

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        pass  # requests.Session.__init__ assigns True; it must not stick


def client_from_env(*, timeout: int = 300) -> docker.DockerClient:
    """A DockerClient for the engine the DOCKER_* variables name, like the docker CLI (see the module docstring).

    The API version is negotiated, so this already talks to the engine: an unreachable engine raises
    the SDK's DockerException; bad settings, and TLS handshakes that fail on certificates, raise
    DockerEnvError with the file and variable to look at.
    """
    settings = settings_from_env()
    kwargs: dict = {"base_url": settings.host, "version": "auto", "timeout": timeout}
    api_class = APIClient
    if settings.tls is not None:
        files = settings.tls
        # verify=<the CA path>: TLSConfig.configure_client then sets session.verify to that file alone.
        kwargs["tls"] = TLSConfig(client_cert=files.client_cert, ca_cert=files.ca_cert,
                                  verify=files.ca_cert if files.verify else False)
        api_class = _TLSAPIClient
    elif _scheme(settings.host) == "ssh" and importlib.util.find_spec("paramiko") is None:
        raise DockerEnvError(f"DOCKER_HOST={settings.host} needs the paramiko package for ssh:// "
                             "(pip install 'docker[ssh]'), as docker.from_env does")
    try:
        api = api_class(**kwargs)
    except docker.errors.DockerException as exc:
        if settings.tls is not None and _is_tls_failure(exc):
            raise DockerEnvError(_tls_message(settings, exc)) from exc
        raise
    # DockerClient.__init__ does nothing but `self.api = APIClient(...)`; this client needs our APIClient.
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: causes, contexts, and urllib3's MaxRetryError.reason / exceptions in args
    (requests' SSLError holds the MaxRetryError that holds the ssl.SSLError only there)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(e for e in inner if isinstance(e, BaseException))


def _is_tls_failure(exc: BaseException) -> bool:
    return any(isinstance(e, (ssl.SSLError, RequestsSSLError)) for e in _chain(exc))


def _tls_message(settings: DockerSettings, exc: BaseException) -> str:
    files = settings.tls
    assert files is not None
    detail = str(exc)
    where = f"TLS connection to the Docker engine at {settings.host} failed"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return (f"{where}: the engine's certificate is not accepted with the CA {files.ca_cert} "
                f"({files.cert_path_source}, DOCKER_TLS_VERIFY is set): {detail}")
    # The engine refusing our certificate shows as an alert ("tlsv13 alert certificate required", "... bad
    # certificate") or, with TLS 1.3 where the client finishes first, as the connection closing right away.
    if "alert" in detail.lower() or any(isinstance(e, ssl.SSLEOFError) for e in _chain(exc)):
        mine = (f"the client certificate {files.client_cert[0]}" if files.client_cert else
                f"no client certificate (neither cert.pem nor key.pem in {files.cert_path})")
        return (f"{where}: the engine ended the handshake, most likely refusing the client certificate; this "
                f"client sent {mine} ({files.cert_path_source}): {detail}")
    return f"{where} ({files.cert_path_source}): {detail}"

"""A second private Docker engine, for tests of two hosts (migration): like scripts/harness.sh's first one,
with its own data-root, exec-root, pidfile and unix socket, `--bridge=none --iptables=false`, and the fixture
image loaded from the first engine (nothing is pulled).

`tls_engine` starts one that also listens on tcp://127.0.0.1:<free port> with `--tlsverify` (client
certificates required), with a throwaway CA made here, for tests of remote engines. Its unix socket is
for setting up and cleaning up only.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

TLS_HOSTS = ("127.0.0.1", "::1", "localhost")  # names in the engine's certificate


def _cli_env() -> dict[str, str]:
    """The environment for dockerd and the docker CLI here: no DOCKER_* settings a test may have left behind
    (dockerd reads DOCKER_CERT_PATH / DOCKER_TLS_VERIFY for its own defaults, the CLI for its connection)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("DOCKER_HOST", "DOCKER_TLS", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")}


def _docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, env=_cli_env(), **kwargs)


@contextlib.contextmanager
def _engine(image: str, first_host: str, timeout: float, root: Path, daemon_args: Sequence[str] = (),
            probe_args: Sequence[str] = (), timings: dict[str, float] | None = None, *,
            keep_root: bool = False) -> Iterator[str]:
    """Start a dockerd in `root`, wait until `docker -H <its socket> version` (and `docker *probe_args version`)
    answer, load `image` from the engine at `first_host`, yield the socket's DOCKER_HOST; then stop and remove.
    `timings` gets "ready" (seconds until the probes answered) and "loaded" (seconds to copy the image).
    With `keep_root`, its data (images, volumes) stays in `root` for the next dockerd started there: a restart."""
    timings = {} if timings is None else timings
    started = time.monotonic()
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed")
    host = f"unix://{root}/docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon keeps it
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
         str(root / "pid"), "-H", host, *daemon_args, "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=_cli_env())
    try:
        deadline = time.monotonic() + timeout
        for probe in (["-H", host], list(probe_args)):
            if not probe:
                continue
            while (last := _docker(*probe, "version", timeout=10)).returncode != 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the second dockerd did not start ({' '.join(probe)}: "
                                       f"{last.stderr.decode(errors='replace').strip()}): "
                                       f"{(root / 'dockerd.log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
        timings["ready"] = time.monotonic() - started
        if _docker("-H", host, "image", "inspect", image, timeout=30).returncode != 0:
            save = subprocess.Popen(["docker", "-H", first_host, "save", image], stdout=subprocess.PIPE,
                                    env=_cli_env())
            _docker("-H", host, "load", "-q", stdin=save.stdout, check=True, timeout=300)
            save.wait(60)
        timings["loaded"] = time.monotonic() - started - timings["ready"]
        yield host
    finally:
        ids = _docker("-H", host, "ps", "-aq", text=True, timeout=30).stdout.split()
        if ids and not keep_root:
            _docker("-H", host, "rm", "-f", *ids, timeout=60)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        log.close()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(f"{root}/")]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        if not keep_root:
            shutil.rmtree(root, ignore_errors=True)


def _new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="dv2.", dir="/tmp"))  # short: unix socket paths are limited


@contextlib.contextmanager
def restartable_engine(image: str, first_host: str, timeout: float = 90.0) -> Iterator[tuple[Path, str]]:
    """The root of an engine to start, stop and start again (`_engine(..., root, keep_root=True)`), removed at the
    end, and the host to load `image` from."""
    root = _new_root()
    try:
        yield root, first_host
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def second_engine(image: str, first_host: str, timeout: float = 90.0) -> Iterator[str]:
    """Start a dockerd, load `image` from the engine at `first_host` into it, yield its DOCKER_HOST, stop it."""
    with _engine(image, first_host, timeout, _new_root()) as host:
        yield host


# ------------------------------------------------------------------------------------------- TLS --
class TLSEngine(dict):
    """The client environment for a TLS engine: DOCKER_HOST (tcp://127.0.0.1:PORT), DOCKER_TLS_VERIFY=1 and
    DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem); the attributes are for tests that need more."""

    def __init__(self, *, host: str, cert_path: Path, setup_host: str, server_dir: Path, started_in: float,
                 loaded_in: float) -> None:
        super().__init__(DOCKER_HOST=host, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(cert_path))
        self.host = host
        self.cert_path = cert_path          # the client's ca.pem, cert.pem, key.pem
        self.setup_host = setup_host        # unix:// socket of the same engine, without TLS: set-up only
        self.server_dir = server_dir        # the engine's ca.pem, cert.pem, key.pem
        self.started_in = started_in        # seconds from starting dockerd until `docker --tlsverify version`
        self.loaded_in = loaded_in          # seconds to copy the fixture image in


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificates(directory: Path, hosts: Sequence[str] = TLS_HOSTS) -> tuple[Path, Path]:
    """A new CA, an engine certificate for `hosts` and a client certificate, both signed by that CA.

    Returns (server_dir, client_dir), each holding ca.pem, cert.pem and key.pem (keys mode 600, unencrypted
    as docker requires). With the `cryptography` package; without it, with the openssl CLI.
    """
    server, client = directory / "server", directory / "client"
    for path in (server, client):
        path.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("cryptography") is not None:
        _make_certificates_cryptography(server, client, hosts)
    else:
        _make_certificates_openssl(directory, server, client, hosts)
    for path in (server, client):
        (path / "key.pem").chmod(0o600)
    return server, client


def _make_certificates_cryptography(server: Path, client: Path, hosts: Sequence[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("dockvault test CA")).issuer_name(name("dockvault test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

    def leaf(directory: Path, common: str, usage, alt_names: list) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "key.pem").write_bytes(pem_key(key))
        (directory / "ca.pem").write_bytes(ca_pem)

    alt: list = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    leaf(server, "dockvault test engine", ExtendedKeyUsageOID.SERVER_AUTH, alt)
    leaf(client, "dockvault test client", ExtendedKeyUsageOID.CLIENT_AUTH, [])


def _make_certificates_openssl(directory: Path, server: Path, client: Path, hosts: Sequence[str]) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ca_key, ca_cert = directory / "ca-key.pem", directory / "ca.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=dockvault test CA", "-keyout", str(ca_key), "-out", str(ca_cert),
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    alt = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    for target, common, extensions in (
            (server, "dockvault test engine", f"extendedKeyUsage=serverAuth\nsubjectAltName={alt}\n"),
            (client, "dockvault test client", "extendedKeyUsage=clientAuth\n")):
        (directory / "ext.cnf").write_text("basicConstraints=critical,CA:FALSE\n"
                                           "keyUsage=critical,digitalSignature\n" + extensions)
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", f"/CN={common}", "-keyout", str(target / "key.pem"), "-out", str(directory / "req.csr"))
        openssl("x509", "-req", "-in", str(directory / "req.csr"), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "2", "-extfile", str(directory / "ext.cnf"),
                "-out", str(target / "cert.pem"))
        shutil.copyfile(ca_cert, target / "ca.pem")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def tls_engine(image: str, first_host: str, timeout: float = 90.0, *, root: Path | None = None,
               keep_root: bool = False) -> Iterator[TLSEngine]:
    """Start a dockerd that answers on tcp://127.0.0.1:<free port> with TLS and client certificates only
    (`--tlsverify`), load `image` into it, yield its client environment (a TLSEngine), stop it. With `root`
    and `keep_root` (see `restartable_engine`), its data stays for the next engine started there (new
    certificates and port each time)."""
    root = root or _new_root()
    try:
        server, client = make_certificates(root / "tls")
    except BaseException:
        if not keep_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    host = f"tcp://127.0.0.1:{free_port()}"
    tls_args = [f"--tlscacert={server / 'ca.pem'}", f"--tlscert={server / 'cert.pem'}",
                f"--tlskey={server / 'key.pem'}"]
    timings: dict[str, float] = {}
    probe = ["--tlsverify", f"--tlscacert={client / 'ca.pem'}", f"--tlscert={client / 'cert.pem'}",
             f"--tlskey={client / 'key.pem'}", "-H", host]
    with _engine(image, first_host, timeout, root, ["--tlsverify", *tls_args, "-H", host], probe,
                 timings, keep_root=keep_root) as setup_host:
        yield TLSEngine(host=host, cert_path=client, setup_host=setup_host, server_dir=server,
                        started_in=timings["ready"], loaded_in=timings["loaded"])

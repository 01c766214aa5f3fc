"""The operator's HTTP endpoints: /metrics for Prometheus, /healthz and /readyz for probes.

The standard library serves them (one thread per request, so a slow scrape never blocks a probe). /metrics is in
OpenMetrics when the scraper's Accept header asks for it; dockvault.exposition writes the two common formats (the
same bytes as prometheus-client, several times faster with many policies), prometheus-client everything else.
"""

from __future__ import annotations

import errno
import functools
import gzip
import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, gzip_accepted

from ..exposition import render

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:9477"
ADDRESS_FORMS = "HOST:PORT, [IPV6]:PORT or :PORT for all interfaces, e.g. 127.0.0.1:9477 or [::1]:9477"
_BIND_HINTS = {
    errno.EADDRINUSE: "; another process listens there: stop it or choose another address",
    errno.EADDRNOTAVAIL: "; no interface of this host has that address",
    errno.EACCES: "; ports below 1024 need root or CAP_NET_BIND_SERVICE",
}


def parse_address(text: str) -> tuple[str, int]:
    """Split a listen address into host and port; an empty host means all interfaces."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"listen address {text!r}: no ']:PORT' after the IPv6 address; expected {ADDRESS_FORMS}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"listen address {text!r}: {host!r} is not an IPv6 address; expected {ADDRESS_FORMS}"
            ) from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"listen address {text!r}: no port; expected {ADDRESS_FORMS}")
        if ":" in host:
            raise ValueError(f"listen address {text!r}: put an IPv6 address in brackets, e.g. [::1]:9477")
        if any(character.isspace() for character in host):
            raise ValueError(f"listen address {text!r}: the host contains spaces; expected {ADDRESS_FORMS}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"listen address {text!r}: the port must be a number from 0 to 65535, as in {ADDRESS_FORMS}")
    return host, int(port_text)


class MetricsServer:
    """Serves the registry and the probes in a daemon thread; start() returns once the socket listens."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str = DEFAULT_ADDRESS,
        *,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._host, self._port = parse_address(address)
        self._address = address
        self._registry = registry
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return self._server.server_address[1]

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the metrics server is already started")
        try:
            family, sockaddr, dual_stack = _listen_target(self._host, self._port)
            server = _Server(family, sockaddr, dual_stack=dual_stack)
        except OSError as exc:
            hint = _BIND_HINTS.get(exc.errno, "")
            raise OSError(exc.errno, f"cannot serve metrics on {self._address}: {exc.strerror or exc}{hint}") from exc
        server.set_app(self._app)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dockvault-http", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s (port %d)", self._address, self.port)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def _app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._serve_metrics(environ, start_response)
        if path not in ("/healthz", "/readyz"):
            return _text(start_response, "404 Not Found", "not found; the paths are /metrics, /healthz and /readyz\n")
        if environ["REQUEST_METHOD"] != "GET":
            return _text(start_response, "405 Method Not Allowed", "use GET\n", [("Allow", "GET")])
        if path == "/healthz" or self._is_ready():
            return _text(start_response, "200 OK", "ok\n")
        return _text(start_response, "503 Service Unavailable", "not ready\n")

    def _serve_metrics(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        openmetrics_1 = (isinstance(encoder, functools.partial) and encoder.func is openmetrics.generate_latest
                         and encoder.keywords.get("version") == "1.0.0"
                         and encoder.keywords.get("escaping") in (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8))
        plain = content_type == CONTENT_TYPE_PLAIN_0_0_4
        if environ["REQUEST_METHOD"] != "GET" or "name[]" in parse_qs(environ.get("QUERY_STRING", "")) or not (
                plain or openmetrics_1):
            return self._metrics(environ, start_response)
        body = render(self._registry, openmetrics=openmetrics_1)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    def _is_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:
            log.exception("the readiness check failed; answering /readyz with 503")
            return False


def _text(start_response: Callable, status: str, body: str, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *headers]
    )
    return [data]


def _listen_target(host: str, port: int) -> tuple[socket.AddressFamily, tuple, bool]:
    """The socket family and address to bind; all interfaces means IPv6 and IPv4 together where the host has IPv6."""
    if not host:
        if socket.has_ipv6 and _ipv6_available():
            return socket.AF_INET6, ("::", port), True
        return socket.AF_INET, ("0.0.0.0", port), False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr, False


def _ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, family: socket.AddressFamily, sockaddr: tuple, *, dual_stack: bool) -> None:
        self.address_family = family
        self._dual_stack = dual_stack
        super().__init__(sockaddr, _QuietHandler)

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would look the address up in DNS (getfqdn), which can stall start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

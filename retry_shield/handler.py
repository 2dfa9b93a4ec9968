"""The HTTP handler: the stdlib's hooks only. It reads a request, asks the pure parts, and sends a Reply."""

import contextlib
import functools
import http.server
import logging
import socket
import time
import urllib.parse
import uuid
from dataclasses import replace
from typing import Optional, Sequence, Tuple

from . import __version__
from .errors import ClientError
from .http1 import read_request_body
from .prepare import parse_request, prepare
from .replies import Reply, client_error_reply, error_reply, json_reply, reply_for
from .routes import (OPERATIONS, for_browser, is_page, mask_secrets_in_bytes, operation_of, preflight_headers,
                     route_error)
from .shield import CLIENT_GONE
from .upstream import readable

logger = logging.getLogger(__name__)


class ShieldHandler(http.server.BaseHTTPRequestHandler):
    """Serves the routes; every request is shielded by ``self.server``."""

    protocol_version = "HTTP/1.1"
    server_version = "retry-shield/" + __version__
    error_content_type = "application/json"
    # Headers and body go out as two writes; with Nagle on, a small body waits for the
    # client's delayed ACK (40 ms on Linux) before it leaves.
    disable_nagle_algorithm = True
    # Buffered output: a small answer leaves with its headers in one write, not two.
    wbufsize = 16 * 1024
    cors_headers: Tuple[Tuple[str, str], ...] = ()

    def setup(self) -> None:
        self.timeout = self.server.config.client_timeout  # a slow client cannot hold a thread forever
        super().setup()

    def handle_expect_100(self) -> bool:
        """The stdlib writes "100 Continue" but leaves it in our output buffer: send it now."""
        if not super().handle_expect_100():
            return False
        self.wfile.flush()
        return True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """Answer with a JSON error instead of the stdlib's HTML page."""
        short, _ = self.responses.get(code, ("Error", ""))
        if self.request_version == "HTTP/0.9":  # a garbage request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        self._send(error_reply(code, message or short, close=True))

    def do_GET(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path = split.path.rstrip("/")
        is_health = path == "/health"
        page = is_page(split.path)
        if not self._admitted(needs_key=not is_health, browser=for_browser(split.path)):
            return
        if is_health:
            self._send(json_reply(200, self.server.health()))
        elif path == "/stats":
            self._send(json_reply(200, self.server.stats()))
        elif page:
            self._send(self.server.status_page())
        elif operation_of(split.path) == "/models":
            self._send(self.server.models(split.query, self.headers.items(), self._client_present))
        else:
            self._send(route_error(self.command, split.path))

    def do_POST(self) -> None:
        started = time.monotonic()
        if not self._admitted():
            return
        split = urllib.parse.urlsplit(self.path)
        operation = operation_of(split.path)
        if operation not in OPERATIONS:
            self._drain_small_body()
            self._send(route_error(self.command, split.path))
            return
        config = self.server.config
        try:
            raw = read_request_body(self.rfile, self.headers, config.max_request_bytes)
            request = parse_request(raw)
            outbound = prepare(operation, split.query, request, raw, self.headers.items(), config)
        except ClientError as exc:
            self._send(client_error_reply(exc))
            return
        # A fallback's own request (its URL, protocol, model, key) is made when the request first goes there.
        prepare_for = functools.partial(prepare, operation, split.query, request, raw, self.headers.items(), config)
        with self.server.in_flight():
            exchange = self.server.shield(self.command, split.path, outbound, started, self._client_present,
                                          prepare_for)
            if exchange.outcome == CLIENT_GONE:
                self.server.log_usage(self.server.record(exchange))
                self.close_connection = True
                return
            with exchange.answer or contextlib.nullcontext():
                ids = uuid.uuid4().hex if exchange.plan is not None else ""  # a translation's ids
                reply = reply_for(exchange, ids, int(time.time()))
                # Counted before sending, so that a client that has its answer finds it in /health and /stats.
                usage = self.server.record(replace(exchange, status=reply.status))
                self._send(reply)
            self.server.log_usage(usage)

    def do_OPTIONS(self) -> None:
        """CORS preflight: answered only for origins in ALLOWED_ORIGINS."""
        if self._admitted(needs_key=False):
            requested = self.headers.get("Access-Control-Request-Headers", "")
            self._send(Reply(204, "text/plain", b"", preflight_headers(requested, self.cors_headers)))

    def do_PUT(self) -> None:
        if self._admitted(needs_key=False):
            self._send(route_error(self.command, urllib.parse.urlsplit(self.path).path))

    do_DELETE = do_PATCH = do_PUT

    def do_HEAD(self) -> None:
        """The status page's headers (the body is not sent for HEAD); a route error elsewhere."""
        if is_page(urllib.parse.urlsplit(self.path).path):
            self.do_GET()
        else:
            self.do_PUT()

    def _admitted(self, needs_key: bool = True, browser: bool = False) -> bool:
        access = self.server.check_access(self.headers, needs_key, browser)
        self.cors_headers = access.cors
        if access.refusal is None:
            return True
        self.server.count("refused")
        logger.warning("refused %s %s from %s: %s", self.command, urllib.parse.urlsplit(self.path).path,
                       self.client_address[0], access.reason)
        self._send(access.refusal)
        return False

    def _drain_small_body(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 65536:
            self.rfile.read(int(length))

    def _client_present(self) -> bool:
        """Whether the client still holds its connection open (it has nothing more to send)."""
        try:
            if not readable(self.connection):
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _send(self, reply: Reply) -> None:
        payload = reply.body
        if reply.status >= 400:  # an upstream that echoes the key in its error must not pass it on
            payload = mask_secrets_in_bytes(bytes(payload), self.server.config.secrets)
        headers: Sequence[Tuple[str, str]] = list(reply.headers) + list(self.cors_headers)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers:
                self.send_header(name, value)
            if reply.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
            if reply.close:
                self._linger()
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def _linger(self) -> None:
        """Read and drop what the client still sends, briefly, so closing does not reset the
        connection before it has read the error (a kernel sends RST over unread data)."""
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(0.2)
        end = time.monotonic() + 1.0
        try:
            while time.monotonic() < end and self.connection.recv(65536):
                pass
        except OSError:
            pass

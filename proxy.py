#!/usr/bin/env python3
"""Retry shield: a local buffering proxy that hides flaky LLM APIs from clients.

Clients (the Codex CLI first of all) talk to http://127.0.0.1:8888/v1. For every
Responses or Chat Completions request the proxy forces ``stream: true``, reads
the whole upstream SSE stream into memory while judging it, retries with
backoff when anything goes wrong, and only then replays the clean stream (or
the equivalent JSON) to the client in one piece.

Run ``python proxy.py --help`` for the settings.
"""

# ---------------------------------------------------------------------------
# Imports
# ---------------------------------------------------------------------------

import argparse
import collections
import contextlib
import email.utils
import errno
import functools
import http.client
import http.server
import ipaddress
import json
import logging
import math
import os
import random
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import zlib
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

try:
    import ctypes
except ImportError:  # pragma: no cover - a Python built without it: the slower paths remain
    ctypes = None  # type: ignore

try:
    from dataclasses import dataclass
except ImportError:  # pragma: no cover - Python < 3.7 is not supported anyway
    raise SystemExit("proxy.py: error: Python 3.8 or newer is required")

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

__version__ = "1.0.0"
SERVICE_NAME = "retry-shield"

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ENV_FILE = os.path.join(HERE, ".env")

OPERATIONS = ("/responses", "/chat/completions")
# Upstream bodies are read this much at a time, straight into a reused buffer.
READ_CHUNK = 256 * 1024
# http.client's own buffer, which reads the status line and headers; the body bypasses it.
HEADER_BUFFER = 16 * 1024
# Buffers kept for reuse once an answer is delivered: at most this many, this many bytes in
# all, each for this many seconds unused.
POOLED_BUFFERS = 64
POOLED_BYTES = 32 * 1024 * 1024
POOLED_SECONDS = 30.0
# How often a long upstream read or backoff wait checks that the client is still there.
CLIENT_CHECK_INTERVAL = 0.25
# Seconds a stopping server gives requests in flight before it cuts them short.
SHUTDOWN_GRACE = 5.0

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))
# Headers the proxy sets itself, in either direction.
NOT_FORWARDED_REQUEST = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
NOT_FORWARDED_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
CREDENTIAL_HEADERS = frozenset(("authorization", "api-key"))

RETRYABLE_STATUSES = frozenset((408, 409, 429))
# OpenSSL's reasons when an https:// endpoint answers in plain HTTP: no retry changes that.
NOT_TLS = frozenset(("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"))
# Error codes that no retry can fix: the same request fails the same way.
FINAL_ERROR_CODES = frozenset((
    "context_length_exceeded", "insufficient_quota", "invalid_prompt",
    "content_filter", "content_policy_violation", "responsible_ai_policy_violation",
    "invalid_api_key", "model_not_found", "invalid_image", "invalid_request_error",
    "unsupported_parameter", "unsupported_value", "invalid_value", "billing_hard_limit_reached",
))
FINAL_ERROR_TYPES = frozenset(("invalid_request_error", "authentication_error", "permission_error"))

TERMINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")
HINT_IN_MESSAGE = re.compile(
    r"(?:try again in|retry after)\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+(?![a-z])|\d+(?:\.\d+)?)"
    r"\s*(milliseconds?|seconds?|secs?|ms|s)?\b",
    re.IGNORECASE,
)
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
EVENT_TYPE = re.compile(rb'"type"\s*:\s*"([^"]+)"')
# A \u escape of an ASCII letter: a key written as "mod\u0065l" is "model" all the same.
ESCAPED_LETTER = re.compile(rb"\\u00(?:[46][1-9A-Fa-f]|[57][0-9Aa])")
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # int(..., 16) alone would take "+2", "0x2" and "1_0"
CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")  # the usual size line
FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')

# ---------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------


class ConfigError(Exception):
    """A setting is missing or malformed; the message is the one line shown to the user."""


class ClientError(Exception):
    """The client's request cannot be served; answered with ``status`` and a JSON error."""

    def __init__(self, status, message, code="invalid_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ClientGone(Exception):
    """The client closed its connection while the proxy was still shielding."""


class UpstreamFailure(Exception):
    """One upstream attempt went wrong.

    ``kind`` names what happened (connect, reset, timeout, status, cut, unterminated,
    stream_error, json_error, too_large); ``retryable`` says whether another attempt
    may succeed; ``status``, ``headers`` and ``body`` keep what the upstream said.
    """

    def __init__(self, kind, detail, status=None, headers=None, body=b"", retryable=True, message=""):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.retryable = retryable
        self.message = message


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Every setting of one proxy run, validated."""

    endpoint: str
    api_key: str = ""
    host: str = "127.0.0.1"
    port: int = 8888
    forced_model: str = ""
    max_retries: int = 8
    retry_base_delay: float = 1.0
    retry_max_delay: float = 30.0
    total_timeout: float = 600.0
    connect_timeout: float = 10.0
    upstream_timeout: float = 120.0
    max_request_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    log_level: str = "INFO"
    proxy_api_key: str = ""
    allowed_origins: Tuple[str, ...] = ()
    client_timeout: float = 60.0
    env_file: str = DEFAULT_ENV_FILE

    @property
    def max_attempts(self):
        return self.max_retries + 1

    @property
    def secrets(self):
        """The keys that must never be written anywhere."""
        return tuple(key for key in (self.api_key, self.proxy_api_key) if key)


class Setting(NamedTuple):
    env: str
    field: str
    parse: Callable[[str, str], Any]
    help: str


def _parse_endpoint(name, value):
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ConfigError(
            "%s=%r is not an http(s) URL; set it to your API base URL, e.g. "
            "https://NAME.openai.azure.com/openai/v1" % (name, value))
    try:
        parts.port
    except ValueError:
        raise ConfigError("%s=%r has an invalid port; fix the URL" % (name, value)) from None
    return value


def _parse_text(name, value):
    return value


def _parse_port(name, value):
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError("%s=%r is not a port; use a whole number from 1 to 65535 (0 picks a free one)"
                          % (name, value))
    return port


def _number_parser(kind, minimum, strict=False):
    def parse(name, value):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < minimum or (strict and number == minimum):
            raise ConfigError("%s=%r is not valid; use a %s %s %s" % (
                name, value, "whole number" if kind is int else "number",
                "above" if strict else "of at least", minimum))
        return number
    return parse


def _parse_origins(name, value):
    origins = tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
    for origin in origins:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ConfigError("%s has %r, which is not an origin; list origins like http://localhost:3000, "
                              "separated by commas" % (name, origin))
    return origins


def _parse_log_level(name, value):
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("%s=%r is not a log level; use DEBUG, INFO, WARNING or ERROR" % (name, value))
    return level


SETTINGS = (
    Setting("AZURE_ENDPOINT", "endpoint", _parse_endpoint,
            "upstream base URL (…/v1) or full operation URL (…/chat/completions?api-version=…); required"),
    Setting("AZURE_API_KEY", "api_key", _parse_text,
            "key sent upstream as api-key and Authorization: Bearer; empty passes the client's own"),
    Setting("HOST", "host", _parse_text, "address to listen on"),
    Setting("PORT", "port", _parse_port, "port to listen on (0 picks a free one)"),
    Setting("FORCED_MODEL", "forced_model", _parse_text, "replaces the request's model when set"),
    Setting("MAX_RETRIES", "max_retries", _number_parser(int, 0), "retries after the first attempt"),
    Setting("RETRY_BASE_DELAY", "retry_base_delay", _number_parser(float, 0.0),
            "first backoff wait in seconds, doubled each retry"),
    Setting("RETRY_MAX_DELAY", "retry_max_delay", _number_parser(float, 0.0),
            "longest backoff wait in seconds (an upstream Retry-After may ask for more)"),
    Setting("TOTAL_TIMEOUT", "total_timeout", _number_parser(float, 0.0, strict=True),
            "seconds one request may take, all attempts and waits included"),
    Setting("CONNECT_TIMEOUT", "connect_timeout", _number_parser(float, 0.0, strict=True),
            "seconds to connect to the upstream"),
    Setting("UPSTREAM_TIMEOUT", "upstream_timeout", _number_parser(float, 0.0, strict=True),
            "seconds of upstream silence before an attempt counts as stalled"),
    Setting("MAX_REQUEST_BYTES", "max_request_bytes", _number_parser(int, 1), "largest request body accepted"),
    Setting("MAX_RESPONSE_BYTES", "max_response_bytes", _number_parser(int, 1),
            "largest upstream answer buffered in memory"),
    Setting("LOG_LEVEL", "log_level", _parse_log_level, "DEBUG, INFO, WARNING or ERROR"),
    Setting("PROXY_API_KEY", "proxy_api_key", _parse_text,
            "key clients must send (Bearer or api-key); required when HOST is not loopback"),
    Setting("ALLOWED_ORIGINS", "allowed_origins", _parse_origins,
            "comma-separated browser origins allowed to call the proxy (CORS); others get 403"),
    Setting("CLIENT_TIMEOUT", "client_timeout", _number_parser(float, 0.0, strict=True),
            "seconds a client may take to send its request; idle connections close after it"),
)


def _settings_help():
    defaults = Config(endpoint="")
    lines = ["settings (environment or .env; an empty value means the default):"]
    for setting in SETTINGS:
        default = getattr(defaults, setting.field)
        shown = "" if default in ("", ()) else " [default: %s]" % (default,)
        lines.append("  %-18s %s%s" % (setting.env, setting.help, shown))
    return "\n".join(lines)


def build_arg_parser():
    parser = argparse.ArgumentParser(
        prog="proxy.py",
        description="Buffering retry-shield proxy for OpenAI-compatible APIs (Responses and Chat Completions).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to listen on (overrides HOST)")
    parser.add_argument("--port", help="port to listen on (overrides PORT)")
    parser.add_argument("--env-file", metavar="PATH", help="read settings from PATH instead of .env beside proxy.py")
    parser.add_argument("--debug", action="store_true", help="log every attempt in detail (LOG_LEVEL=DEBUG)")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def load_config(argv, environ):
    # type: (List[str], Mapping[str, str]) -> Config
    """Build the Config from command-line flags over ``environ``; raise ConfigError on bad input."""
    args = build_arg_parser().parse_args(argv)
    values = {}  # type: Dict[str, Any]
    flags = {"HOST": args.host, "PORT": args.port}
    for setting in SETTINGS:
        raw = flags.get(setting.env)
        if raw is None:
            raw = environ.get(setting.env, "")
        raw = raw.strip()
        if raw:
            values[setting.field] = setting.parse(setting.env, raw)
    if "endpoint" not in values:
        raise ConfigError("AZURE_ENDPOINT is not set; put AZURE_ENDPOINT=https://NAME.openai.azure.com/openai/v1 "
                          "in .env (see .env.example) or the environment")
    if args.debug:
        values["log_level"] = "DEBUG"
    if args.env_file:
        values["env_file"] = args.env_file
    config = Config(**values)
    if not is_loopback_host(config.host) and not config.proxy_api_key:
        raise ConfigError("HOST=%s is reachable from other machines, which could then spend your API key; "
                          "set PROXY_API_KEY to a secret clients must send, or use HOST=127.0.0.1" % config.host)
    if config.retry_max_delay < config.retry_base_delay:
        raise ConfigError("RETRY_MAX_DELAY=%s is below RETRY_BASE_DELAY=%s; raise RETRY_MAX_DELAY"
                          % (config.retry_max_delay, config.retry_base_delay))
    return config


# ---------------------------------------------------------------------------
# URL mapping and request guards
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def is_loopback_host(host):
    """Whether ``host`` (a name or address, without port) names this machine's loopback."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header, config):
    """Whether a request's ``Host`` header names this proxy (a defence against DNS rebinding)."""
    if host_header is None:
        return True  # HTTP/1.0 clients; browsers always send Host
    parts = urllib.parse.urlsplit("//" + host_header.strip())
    try:
        name = parts.hostname or ""
        parts.port
    except ValueError:
        return False
    if is_loopback_host(name):
        return True
    if config.host in ("0.0.0.0", "::", ""):
        return True  # listening everywhere: PROXY_API_KEY is mandatory and does the guarding
    return name == config.host.strip("[]").lower()


def client_key(headers):
    """The key a client sent as ``Authorization: Bearer`` or ``api-key``, or ""."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("api-key", "").strip()


def operation_of(path):
    """The operation a client path asks for (``/responses``, ``/chat/completions``, ``/models``) or None."""
    if path.startswith("/v1/"):
        path = path[3:]
    path = path.rstrip("/")
    if path in OPERATIONS or path == "/models":
        return path
    return None


@functools.lru_cache(maxsize=256)
def upstream_url(endpoint, operation, client_query=""):
    """The upstream URL for ``operation`` given AZURE_ENDPOINT.

    An endpoint whose path ends in an operation is a full operation URL: every POST
    goes there. Any other endpoint is a base URL the operation is appended to. The
    endpoint's query string is kept; the client's parameters are added unless the
    endpoint already sets them.
    """
    parts = urllib.parse.urlsplit(endpoint)
    base = parts.path.rstrip("/")
    full = next((op for op in OPERATIONS if base.endswith(op)), None)
    if full is None:
        path = base + operation
    elif operation == "/models":
        path = base[:-len(full)] + operation
    else:
        path = base
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    fixed = {key for key, _ in query}
    query += [(key, value) for key, value in urllib.parse.parse_qsl(client_query, keep_blank_values=True)
              if key not in fixed]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, urllib.parse.urlencode(query), ""))


def redact_url(url):
    """``url`` without credentials or query string, fit for logs and banners."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = "[%s]" % netloc
    if parts.port:
        netloc += ":%d" % parts.port
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def upstream_headers(client_headers, api_key, drop_credentials=False):
    # type: (List[Tuple[str, str]], str, bool) -> Dict[str, str]
    """The headers to send upstream: the client's, minus hop-by-hop ones, with our credentials.

    The client's own credentials pass only when no key is configured and they are
    not the proxy's own key (``drop_credentials``).
    """
    connection_tokens = {token.strip().lower() for name, value in client_headers
                         if name.lower() == "connection" for token in value.split(",")}
    headers = {}
    for name, value in client_headers:
        lower = name.lower()
        if lower in NOT_FORWARDED_REQUEST or lower in connection_tokens:
            continue
        if (api_key or drop_credentials) and lower in CREDENTIAL_HEADERS:
            continue
        headers[name] = value
    if api_key:
        headers["api-key"] = api_key
        headers["Authorization"] = "Bearer " + api_key
    headers["Accept-Encoding"] = "identity"
    return headers


# ---------------------------------------------------------------------------
# Protocol inspection
# ---------------------------------------------------------------------------


class StreamVerdict(NamedTuple):
    """What a finished stream amounts to.

    ``outcome`` is one of COMPLETE (deliver), INCOMPLETE (deliver: a legitimate
    end such as max_output_tokens), FAILED (deliver: a final error no retry can
    fix), RETRY (an error a retry may fix) or UNFINISHED (no terminator).
    """

    outcome: str
    detail: str = ""
    error: Optional[dict] = None
    usage: Optional[dict] = None
    terminal: Optional[Tuple[int, int]] = None  # where the terminal event's JSON sits in the buffer (Responses)

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    RETRY = "retry"
    UNFINISHED = "unfinished"

    @property
    def deliverable(self):
        return self.outcome in (self.COMPLETE, self.INCOMPLETE, self.FAILED)


def is_final_error(error):
    """Whether an error object from the upstream names a failure that retrying cannot fix."""
    if not isinstance(error, dict):
        return False
    return error.get("code") in FINAL_ERROR_CODES or error.get("type") in FINAL_ERROR_TYPES


def _data_json(line):
    """The JSON of an SSE ``data:`` line, or None."""
    payload = line[5:].strip() if line.startswith(b"data:") else b""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(error):
    if not isinstance(error, dict):
        return str(error)
    code = error.get("code") or error.get("type") or "error"
    return "%s: %s" % (code, error.get("message", ""))


def _c_memmem():
    """The C library's ``memmem``, or None where ctypes cannot reach it (Windows)."""
    if ctypes is None:
        return None
    try:
        memmem = ctypes.PyDLL(None).memmem  # PyDLL: called holding the GIL, no hand-over per search
    except (OSError, AttributeError, TypeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    return memmem


MEMMEM = _c_memmem()
MEMMEM_FROM = 4096  # below this many bytes bytearray.find is quicker than a call through ctypes


def byte_finder(buf, start, end):
    """``find(needle, at)``: ``buf.find(needle, at, end)``, with the C library's memmem
    for a search from ``start`` long enough to repay a foreign call: on JSON text it is
    about twice as fast."""
    if MEMMEM is None or end - start < MEMMEM_FROM:
        return lambda needle, at: buf.find(needle, at, end)
    return MemmemFinder(buf, end)


class MemmemFinder:
    """``buf.find(needle, at, end)`` through memmem; while it lives, ``buf`` cannot be
    resized (that raises BufferError), so its address stays valid."""

    def __init__(self, buf, end):
        self._anchor = ctypes.c_char.from_buffer(buf)  # an export of buf: pins its memory
        self._base = ctypes.addressof(self._anchor)
        self._end = end

    def __call__(self, needle, at):
        if at + len(needle) > self._end:
            return -1
        hit = MEMMEM(self._base + at, self._end - at, needle, len(needle))
        return hit - self._base if hit else -1


class StreamInspector:
    """Judges an SSE stream as its bytes arrive.

    ``feed`` appends to one buffer and looks only at the new bytes, with a single
    byte search for ``"error"``: inside a JSON string an opening quote is escaped, so
    that sequence is a real key or value, or (rarely) text ending in a quoted "error,
    which the JSON check of its line then clears.
    Terminal events sit at the end of a stream, so ``verdict`` reads only the
    last lines. Total cost is linear in the stream's size.
    """

    ERROR_MARK = b'"error"'

    def __init__(self, protocol, buffer=None):
        self.protocol = protocol  # "responses" or "chat"
        # The stream so far is buffer[:size]; a reused buffer's tail holds stale bytes.
        self.buffer = bytearray() if buffer is None else buffer
        self.size = 0
        self.error = None  # type: Optional[dict]
        self._searched = 0

    def feed(self, chunk):
        self.feed_spans(chunk, ((0, len(chunk)),))

    def feed_spans(self, data, spans):
        """Append each (start, end) span of ``data``, then judge the new bytes once."""
        for start, stop in spans:
            end = self.size + stop - start
            try:
                self.buffer[self.size:end] = data[start:stop]  # overwrites a reused buffer's tail, or grows it
            except BufferError:  # a view of this reused buffer is still alive, so it cannot grow: move on
                self.buffer = self.buffer[:self.size] + data[start:stop]
            self.size = end
        if self.error is None:
            self._search_errors()

    @property
    def body(self):
        """The stream so far, as a view: no copy."""
        return memoryview(self.buffer)[:self.size]

    def _search_errors(self, final=False):
        """Judge each new ``error"`` that is not ``"error": null``; wait for more bytes when cut short."""
        buf, size = self.buffer, self.size
        mark = self.ERROR_MARK
        find = byte_finder(buf, self._searched, size)
        pos = find(mark, self._searched)
        while pos >= 0:
            value = pos + len(mark)
            if value + 6 > size and not final:
                self._searched = pos
                return
            if not bytes(buf[value:min(value + 6, size)]).lstrip(b": ").startswith(b"null"):
                line_end = buf.find(b"\n", value, size)
                if line_end < 0:
                    if not final:
                        self._searched = pos
                        return
                    line_end = size
                line_start = buf.rfind(b"\n", 0, pos) + 1
                self._judge_error_line(bytes(buf[line_start:line_end]).rstrip(b"\r"))
                if self.error is not None:
                    return
                pos = line_end
            pos = find(mark, pos + 1)
        self._searched = max(self._searched, size - len(mark) + 1)

    def _judge_error_line(self, line):
        event = _data_json(line)
        if event is None:
            return
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else event
            self.error = {key: error.get(key) for key in ("code", "type", "message", "param")}
        elif isinstance(event.get("error"), dict) and not str(kind or "").startswith("response."):
            self.error = dict(event["error"])

    def verdict(self):
        # type: () -> StreamVerdict
        """Judge the stream as it stands: call once the upstream has finished sending."""
        if self.error is None:
            self._search_errors(final=True)
        if self.error is not None:
            outcome = StreamVerdict.FAILED if is_final_error(self.error) else StreamVerdict.RETRY
            return StreamVerdict(outcome, "error event: " + _error_text(self.error), error=self.error)
        if self.protocol == "responses":
            return self._responses_verdict()
        return self._chat_verdict()

    def _last_lines(self, limit):
        """Spans (start, end) of up to ``limit`` last non-empty, non-comment lines, newest first.

        Spans, not copies: the last line of a long answer can be megabytes long.
        """
        buf = self.buffer
        end = self.size
        spans = []
        while end > 0 and len(spans) < limit:
            line_start = buf.rfind(b"\n", 0, end) + 1
            start, stop = line_start, end
            while start < stop and buf[start] in b" \t\r":
                start += 1
            while stop > start and buf[stop - 1] in b" \t\r":
                stop -= 1
            if stop > start and buf[start] != ord(":"):
                spans.append((start, stop))
            end = line_start - 1
        return spans

    def _head(self, span, size):
        return bytes(self.buffer[span[0]:min(span[1], span[0] + size)])

    def _data_spans(self, spans):
        """The spans of ``data:`` lines, and whether the newest one is ``[DONE]``."""
        data = [span for span in spans if self._head(span, 5) == b"data:"]
        done = bool(data) and self._head(data[0], 16)[5:].strip() == b"[DONE]"
        return data, done

    def _responses_verdict(self):
        spans = self._last_lines(6)
        data, done = self._data_spans(spans)
        if done:
            data = data[1:]  # some servers add [DONE] after the terminal event
        if not data:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without response.completed")
        line = data[0]
        name = self._event_name(spans, line)
        if name not in TERMINAL_EVENTS:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without response.completed")
        if not self._line_is_whole(line):  # the connection dropped inside the last line
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream cut inside %s" % name.decode("ascii", "replace"))
        payload = (line[0] + 5, line[1])
        usage = self._usage(payload)
        if name == b"response.completed":
            return StreamVerdict(StreamVerdict.COMPLETE, "completed", usage=usage, terminal=payload)
        if name == b"response.incomplete":
            return StreamVerdict(StreamVerdict.INCOMPLETE, "incomplete", usage=usage, terminal=payload)
        event = _data_json(bytes(self.buffer[line[0]:line[1]])) or {}
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        error = response.get("error") if isinstance(response.get("error"), dict) else {"code": None}
        outcome = StreamVerdict.FAILED if is_final_error(error) else StreamVerdict.RETRY
        return StreamVerdict(outcome, "response.failed: " + _error_text(error), error=error,
                             usage=usage, terminal=payload)

    def _line_is_whole(self, span):
        """Whether a data line's JSON is closed and its line ended (an event is dispatched at its end)."""
        buf = self.buffer
        return buf[span[1] - 1] == ord("}") and buf.find(b"\n", span[1], min(span[1] + 2, self.size)) >= 0

    def _event_name(self, spans, data):
        """The name of the event whose data line is ``data``: its ``event:`` line, else the data's type."""
        index = spans.index(data)
        if index + 1 < len(spans) and self._head(spans[index + 1], 6) == b"event:":
            return self._head(spans[index + 1], 64)[6:].strip()
        match = EVENT_TYPE.search(self.buffer, data[0], min(data[1], data[0] + 512))
        return match.group(1) if match else None

    def _usage(self, span):
        """The usage object in a JSON line, found from its end so the output text is not parsed."""
        pos = self.buffer.rfind(b'"usage"', span[0], span[1])
        if pos < 0:
            return None
        text = bytes(self.buffer[pos + 7:span[1]]).lstrip(b" :").decode("utf-8", "replace")
        try:
            usage, _ = json.JSONDecoder().raw_decode(text)
        except ValueError:
            return None
        return usage if isinstance(usage, dict) else None

    def _chat_verdict(self):
        data, done = self._data_spans(self._last_lines(64))
        if not done:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without data: [DONE]")
        if not any(FINISH_REASON.search(self.buffer, start, end) for start, end in data[1:]):
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without a finish_reason")
        usage = next((self._usage(span) for span in data[1:3]
                      if self.buffer.find(b'"usage"', span[0], span[1]) >= 0), None)
        return StreamVerdict(StreamVerdict.COMPLETE, "completed", usage=usage)


def iter_sse_data(body):
    """Each ``data:`` payload of an SSE body, as bytes."""
    for line in bytes(body).splitlines():
        if line.startswith(b"data:"):
            yield line[5:].strip()


def assemble_chat_completion(body):
    """Turn a buffered Chat Completions stream into the ``chat.completion`` a non-streaming client expects."""
    completion = {"object": "chat.completion", "choices": []}  # type: Dict[str, Any]
    choices = {}  # type: Dict[int, Dict[str, Any]]
    for payload in iter_sse_data(body):
        if payload == b"[DONE]":
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                completion[key] = chunk[key]
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            _merge_choice(choices, delta_choice)
    completion["choices"] = [_finish_choice(choices[index]) for index in sorted(choices)]
    return completion


def _merge_choice(choices, delta_choice):
    index = delta_choice.get("index", 0)
    choice = choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                        "parts": {}, "tools": {}, "finish_reason": None})
    delta = delta_choice.get("delta") or {}
    for field in ("content", "refusal"):
        if delta.get(field) is not None:
            choice["parts"].setdefault(field, []).append(delta[field])
    if delta.get("role"):
        choice["message"]["role"] = delta["role"]
    for call in delta.get("tool_calls") or ():
        slot = choice["tools"].setdefault(call.get("index", 0), {"type": "function", "arguments": [],
                                                                 "function": {}})
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] = function["name"]
        if function.get("arguments"):
            slot["arguments"].append(function["arguments"])
    if delta_choice.get("finish_reason"):
        choice["finish_reason"] = delta_choice["finish_reason"]
    logprobs = delta_choice.get("logprobs")
    if isinstance(logprobs, dict):
        merged = choice.setdefault("logprobs", {"content": None, "refusal": None})
        for key in ("content", "refusal"):
            if isinstance(logprobs.get(key), list):
                if merged[key] is None:
                    merged[key] = []
                merged[key].extend(logprobs[key])


def _finish_choice(choice):
    message = choice["message"]
    message["content"] = "".join(choice["parts"]["content"]) if "content" in choice["parts"] else None
    message["refusal"] = "".join(choice["parts"]["refusal"]) if "refusal" in choice["parts"] else None
    if choice["tools"]:
        message["tool_calls"] = []
        for index in sorted(choice["tools"]):
            slot = choice["tools"][index]
            function = dict(slot["function"], arguments="".join(slot["arguments"]))
            call = {"id": slot.get("id"), "type": slot["type"], "function": function}
            message["tool_calls"].append(call)
    return {"index": choice["index"], "message": message, "logprobs": choice.get("logprobs"),
            "finish_reason": choice["finish_reason"]}


class ChunkedDecoder:
    """Takes HTTP/1.1 chunked framing off a body read in pieces of any size.

    ``feed(data, start, end)`` returns the (start, end) spans of ``data`` that are body
    bytes, without copying them; ``done`` turns true after the last chunk and its
    trailers. Malformed framing raises ValueError.
    """

    MAX_LINE = 4096

    def __init__(self):
        self.left = 0  # body bytes still due in the current chunk
        self.after_data = False  # the line ending a chunk's data is due
        self.trailers = False
        self.done = False
        self._line = b""  # a line cut short by the end of a read

    def feed(self, data, start, end):
        spans = []
        pos = start
        while pos < end and not self.done:
            if self.left:
                stop = min(end, pos + self.left)
                spans.append((pos, stop))
                self.left -= stop - pos
                pos = stop
                if self.left:
                    break
                if pos + 2 <= end and data[pos:pos + 2] == b"\r\n":
                    pos += 2
                    continue
                self.after_data = True
            elif not (self._line or self.after_data or self.trailers):
                head = CHUNK_HEAD.match(data, pos, end)
                if head is not None:  # the usual case, a chunk per event: no line machinery
                    size = int(head.group(1), 16)
                    if size:
                        pos = head.end()
                        stop = pos + size
                        if stop + 2 <= end and data[stop:stop + 2] == b"\r\n":
                            spans.append((pos, stop))
                            pos = stop + 2
                        else:
                            self.left = size
                        continue
            eol = data.find(b"\n", pos, end)
            if eol < 0:
                self._line += bytes(data[pos:end])
                if len(self._line) > self.MAX_LINE:
                    raise ValueError("chunk size line over %d bytes" % self.MAX_LINE)
                break
            line, self._line = (self._line + bytes(data[pos:eol])).strip(), b""
            pos = eol + 1
            self._take_line(line)
        return spans

    def _take_line(self, line):
        if self.after_data:
            if line:
                raise ValueError("chunk data longer than its size")
            self.after_data = False
        elif self.trailers:
            self.done = not line
        else:
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size_text):
                raise ValueError("bad chunk size %r" % line[:40])
            size = int(size_text, 16)
            self.trailers = size == 0
            self.left = size


# ---------------------------------------------------------------------------
# Retry policy
# ---------------------------------------------------------------------------


def parse_duration(text):
    """Seconds in ``6m0s``, ``1s``, ``12ms``, ``1h2m`` or a plain number; None if unreadable."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def retry_hint(headers, message="", now=None):
    # type: (Mapping[str, str], str, Optional[float]) -> Optional[float]
    """The wait in seconds the upstream asks for, if it says: headers first, then its message."""
    headers = {name.lower(): value for name, value in headers.items()}
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in headers:
        value = headers["retry-after"].strip()
        seconds = parse_duration(value) if value.replace(".", "", 1).isdigit() else None
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                now = time.time() if now is None else now
                seconds = max(0.0, when.timestamp() - now)
        if seconds is not None:
            return seconds
    resets = [parse_duration(headers[name]) for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
              if name in headers]
    resets = [seconds for seconds in resets if seconds is not None]
    if resets:
        return max(resets)
    match = HINT_IN_MESSAGE.search(message or "")
    if match:
        amount, unit = match.group(1).lower(), (match.group(2) or "s").lower()
        if not amount.replace(".", "", 1).isdigit():  # a duration such as 1m2.5s or 250ms
            return parse_duration(amount)
        return float(amount) / (1000.0 if unit.startswith("m") else 1.0)
    return None


class RetryPolicy:
    """Decides, after a failed attempt, how long to wait before the next one, or to give up."""

    def __init__(self, max_retries, base_delay, max_delay, total_timeout, rng=None):
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.total_timeout = total_timeout
        self.random = rng or random.random

    @classmethod
    def from_config(cls, config):
        return cls(config.max_retries, config.retry_base_delay, config.retry_max_delay, config.total_timeout)

    def backoff(self, retry_number):
        """Progressive wait before retry ``retry_number`` (0 for the first), with jitter."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(retry_number, 32))
        return ceiling * (0.75 + 0.25 * self.random())

    def next_wait(self, failure, attempts_made, elapsed):
        # type: (UpstreamFailure, int, float) -> Optional[float]
        """Seconds to wait before the next attempt, or None to give up.

        ``attempts_made`` counts attempts so far (1 after the first); ``elapsed`` is the
        time since the request arrived. An upstream hint (Retry-After and friends)
        wins over the backoff, but never stretches the request past total_timeout.
        """
        if not failure.retryable or attempts_made > self.max_retries:
            return None
        hint = retry_hint(failure.headers, failure.message)
        wait = hint if hint is not None else self.backoff(attempts_made - 1)
        if elapsed + wait >= self.total_timeout:
            return None
        return wait


# ---------------------------------------------------------------------------
# Upstream attempt
# ---------------------------------------------------------------------------


class UpstreamAnswer(NamedTuple):
    """A finished attempt to hand to the client: good, or final as the upstream sent it."""

    status: int
    headers: List[Tuple[str, str]]
    body: Any  # bytes, or a memoryview of ``buffer``
    verdict: Optional[StreamVerdict]  # None: not a stream (passed through as it came)
    buffer: Optional[bytearray] = None  # to give back to the BufferPool once delivered


def _kb(size):
    return "%d bytes" % size if size < 1024 else "%d KB" % (size // 1024)


class HeadersOnlyResponse(http.client.HTTPResponse):
    """An upstream answer whose http.client reader has a known buffer size.

    ``AnswerReader`` reads the body itself: first what this buffer holds after the
    headers, then straight from the socket into its own buffers.
    """

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # nothing was read through the stdlib's reader yet
        self.fp = sock.makefile("rb", HEADER_BUFFER)


def _open_connection(url, connect_timeout):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=connect_timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    conn.response_class = HeadersOnlyResponse
    return conn, _target_of(url)


def _target_of(url):
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")


def _read_bounded(response, limit):
    """The rest of a (small, non-SSE) upstream body, up to ``limit`` bytes."""
    body = response.read(limit + 1)
    if len(body) > limit:
        raise UpstreamFailure("too_large", "upstream answer over MAX_RESPONSE_BYTES (%d bytes)" % limit,
                              retryable=False)
    return body


def _decoder_for(encoding):
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    return None


class ConnectionPool:
    """Idle keep-alive connections to the upstream: a request reuses one instead of
    connecting anew (on TLS, a handshake saved)."""

    def __init__(self, size=16):
        self.size = size
        self._idle = []  # type: List[Tuple[str, http.client.HTTPConnection]]
        self._lock = threading.Lock()

    def take(self, origin):
        """An idle connection to ``origin`` still open at the other end, or None."""
        while True:
            with self._lock:
                found = next((index for index, (key, _) in enumerate(self._idle) if key == origin), None)
                if found is None:
                    return None
                _, conn = self._idle.pop(found)
            if conn.sock is not None and not _readable(conn.sock):  # readable while idle: closed upstream
                return conn
            conn.close()

    def give(self, origin, conn):
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((origin, conn))
                return
        conn.close()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


class BufferPool:
    """Large buffers kept for the next answers: a reused buffer's memory is already
    mapped, so filling it costs a copy, not a page fault per 4 KB (on this kind of
    machine, faults cost more than the copy). Unused buffers go after a while."""

    def __init__(self, count=POOLED_BUFFERS, total=POOLED_BYTES, seconds=POOLED_SECONDS):
        self.count = count
        self.total = total
        self.seconds = seconds
        self._free = []  # type: List[Tuple[float, bytearray]]
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, biggest=False):
        """A buffer of at least READ_CHUNK bytes with stale contents: the biggest kept, or the smallest."""
        with self._lock:
            if self._free:
                pick = max if biggest else min
                index = pick(range(len(self._free)), key=lambda i: len(self._free[i][1]))
                _, buf = self._free.pop(index)
                self._bytes -= len(buf)
                return buf
        return bytearray(READ_CHUNK)

    def give(self, buf, now=None):
        with self._lock:
            if len(self._free) < self.count and self._bytes + len(buf) <= self.total:
                self._free.append((time.monotonic() if now is None else now, buf))
                self._bytes += len(buf)

    def trim(self, now=None):
        """Let go of the buffers unused for ``seconds``."""
        cutoff = (time.monotonic() if now is None else now) - self.seconds
        with self._lock:
            old = [buf for given, buf in self._free if given < cutoff]
            if old:
                self._free = [(given, buf) for given, buf in self._free if given >= cutoff]
                self._bytes -= sum(len(buf) for buf in old)

    @property
    def pooled_bytes(self):
        with self._lock:
            return self._bytes


def attempt(config, url, body, headers, protocol, deadline, still_wanted, open_sockets=None, pool=None,
            buffers=None):
    # type: (Config, str, bytes, Dict[str, str], str, float, Callable[[], bool], Optional[set], Optional[ConnectionPool], Optional[BufferPool]) -> UpstreamAnswer
    """Make one upstream attempt and read its whole answer.

    Returns an UpstreamAnswer the client may receive; raises UpstreamFailure for
    anything worth another attempt (or a final proxy-side failure), and ClientGone
    when ``still_wanted()`` turns false while reading. The upstream socket sits in
    ``open_sockets`` while in use, so a stopping server can cut it short. With a
    ``pool``, a kept-alive connection is reused and a finished one given back. The
    answer is read into buffers from ``buffers``; a delivered answer's ``buffer`` is
    the caller's to give back.
    """
    open_sockets = set() if open_sockets is None else open_sockets
    buffers = BufferPool(count=0) if buffers is None else buffers
    origin = url.split("/", 3)[2]
    while True:
        conn = pool.take(origin) if pool is not None else None
        reused = conn is not None
        if conn is None:
            conn, target = _open_connection(url, config.connect_timeout)
        else:
            target = _target_of(url)
        sock = response = None
        kept = False
        try:
            if not reused:
                try:
                    conn.connect()
                except socket.timeout:
                    raise UpstreamFailure("timeout", "connect timed out after %ss" % config.connect_timeout) \
                        from None
                except ssl.SSLCertVerificationError as exc:  # no retry makes it trusted
                    raise UpstreamFailure("tls", "the upstream's TLS certificate is not trusted (%s); check "
                                          "AZURE_ENDPOINT, or set SSL_CERT_FILE to your CA bundle"
                                          % exc.verify_message, retryable=False) from None
                except ssl.SSLError as exc:
                    if exc.reason not in NOT_TLS:
                        raise UpstreamFailure("connect", "TLS handshake failed: %s" % (exc.reason or exc,)) from None
                    raise UpstreamFailure("tls", "the upstream does not speak TLS (%s); use http:// in "
                                          "AZURE_ENDPOINT for a plain HTTP upstream" % exc.reason,
                                          retryable=False) from None
                except OSError as exc:
                    raise UpstreamFailure("connect", "cannot connect: %s" % (exc.strerror or exc,)) from None
            sock = conn.sock  # kept: http.client drops conn.sock when the answer is close-delimited
            sock.settimeout(max(0.001, min(config.upstream_timeout, deadline - time.monotonic())))
            open_sockets.add(sock)
            try:
                conn.request("POST", target, body=body, headers=headers)
                response = conn.getresponse()
            except socket.timeout:
                raise UpstreamFailure("timeout", "no answer within %ss" % config.upstream_timeout) from None
            except (OSError, http.client.HTTPException) as exc:
                if reused:
                    continue  # the upstream closed the idle connection just now: not a failed attempt
                raise UpstreamFailure("reset", "connection lost before the answer: %s"
                                      % (getattr(exc, "strerror", None) or exc.__class__.__name__,)) from None
            reader = AnswerReader(config, response, protocol, buffers)
            answer = None
            try:
                reader.read(sock, deadline, still_wanted)
                answer = _judge(response.status, response.getheaders(), reader.content_type, reader.inspector)
            finally:
                if answer is None or answer.buffer is None:
                    buffers.give(reader.inspector.buffer)
            if pool is not None and reader.finished and not response.will_close:
                response.close()  # the reader only: the connection stays open for the next request
                pool.give(origin, conn)
                kept = True
            return answer
        finally:
            open_sockets.discard(sock)
            if not kept:
                if response is not None:
                    response.close()
                conn.close()


class AnswerReader:
    """Reads an upstream body after its headers into a pooled buffer, judging it as it comes.

    http.client's own body reader copies each chunk three times and parses chunk
    framing a line at a time; this one reads up to READ_CHUNK bytes per system call
    into a scratch buffer and copies only the body bytes, once, into the answer.
    """

    def __init__(self, config, response, protocol, buffers):
        self.config = config
        self.response = response
        self.buffers = buffers
        self.content_type = (response.getheader("Content-Type") or "").lower()
        self.decoder = _decoder_for(response.getheader("Content-Encoding"))
        self.inspector = StreamInspector(protocol, buffers.take(biggest=True))
        self.framing = ChunkedDecoder() if response.chunked else None
        self.left = response.length  # None: until the upstream closes, or the last chunk
        self.finished = False

    def read(self, sock, deadline, still_wanted):
        """Read to the end of the body; raise UpstreamFailure or ClientGone."""
        config = self.config
        scratch = self.buffers.take()
        next_check = time.monotonic() + CLIENT_CHECK_INTERVAL
        try:
            size = 0
            if self.left != 0:  # Content-Length: 0, a 204 or a 304 has no body to wait for
                # What http.client's reader holds past the headers first: asking it for more
                # than it holds would make it block on the socket for the rest.
                first = self.response.fp.read1(HEADER_BUFFER if self.left is None else min(HEADER_BUFFER, self.left))
                scratch[:len(first)] = first
                size = len(first)
            with memoryview(scratch) as view:
                while size:
                    complete = self._take(scratch, view, size)
                    if self.inspector.size > config.max_response_bytes:
                        raise UpstreamFailure("too_large", "upstream answer over MAX_RESPONSE_BYTES (%d bytes); "
                                              "raise MAX_RESPONSE_BYTES" % config.max_response_bytes,
                                              retryable=False)
                    if complete:
                        break
                    now = time.monotonic()
                    if now >= next_check:
                        if not still_wanted():
                            raise ClientGone()
                        next_check = now + CLIENT_CHECK_INTERVAL
                        sock.settimeout(max(0.001, min(config.upstream_timeout, deadline - now)))
                    want = READ_CHUNK if self.left is None else min(READ_CHUNK, self.left)
                    size = self.response.fp.readinto1(view[:want])
            if (self.framing is not None and not self.framing.done) or self.left:
                raise http.client.IncompleteRead(b"", self.left)
            if self.decoder is not None:
                self.inspector.feed(self.decoder.flush())
            self.finished = True
        except socket.timeout:
            raise UpstreamFailure("timeout", "upstream silent for %ss after %s" % (
                config.upstream_timeout, _kb(self.inspector.size))) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UpstreamFailure("cut", "stream cut after %s (%s)" % (
                _kb(self.inspector.size), exc.__class__.__name__), status=self.response.status) from None
        except zlib.error:
            raise UpstreamFailure("cut", "corrupt compressed answer after %s" % _kb(self.inspector.size)) from None
        finally:
            self.buffers.give(scratch)

    def _take(self, scratch, view, size):
        """Pass ``size`` raw bytes of ``scratch`` on to the inspector; True once the body is complete."""
        if self.left is not None:
            self.left -= size
        spans = [(0, size)] if self.framing is None else self.framing.feed(scratch, 0, size)
        if self.decoder is None:
            self.inspector.feed_spans(view, spans)
        else:
            for start, end in spans:
                self.inspector.feed(self.decoder.decompress(view[start:end]))
        return self.left == 0 or (self.framing is not None and self.framing.done)


def _judge(status, headers, content_type, inspector):
    """Turn a fully read answer into an UpstreamAnswer to deliver, or raise UpstreamFailure."""
    # An error or a JSON answer is parsed below, which needs bytes; a stream is delivered as a view.
    body = bytes(inspector.body) if status != 200 or "json" in content_type else b""
    header_map = {name.lower(): value for name, value in headers}
    if status != 200:
        error = _json_error(body)
        message = error.get("message", "") if error else ""
        retryable = status in RETRYABLE_STATUSES or status >= 500
        if not retryable:
            return UpstreamAnswer(status, headers, body, None)
        raise UpstreamFailure("status", "HTTP %d%s" % (status, (": " + _error_text(error)) if error else ""),
                              status=status, headers=header_map, body=bytes(body), message=message)
    if "json" in content_type:
        error = _json_error(body)
        if error is None:  # an upstream that does not stream: pass its answer through
            return UpstreamAnswer(status, headers, body, None)
        if is_final_error(error):
            return UpstreamAnswer(status, headers, body, None)
        raise UpstreamFailure("json_error", "JSON error instead of a stream: " + _error_text(error),
                              status=status, headers=header_map, body=bytes(body),
                              message=str(error.get("message", "")))
    verdict = inspector.verdict()
    if verdict.deliverable:
        return UpstreamAnswer(status, headers, inspector.body, verdict, inspector.buffer)
    if verdict.outcome == StreamVerdict.UNFINISHED:
        raise UpstreamFailure("unterminated", "%s (%s)" % (verdict.detail, _kb(inspector.size)))
    raise UpstreamFailure("stream_error", verdict.detail, headers=header_map,
                          message=str((verdict.error or {}).get("message") or ""))


def _json_error(body):
    """The ``error`` object of a JSON body, if it is one."""
    try:
        value = json.loads(bytes(body))
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("error"):
        error = value["error"]
        return error if isinstance(error, dict) else {"message": str(error)}
    return None


# ---------------------------------------------------------------------------
# Handler
# ---------------------------------------------------------------------------


def json_error_body(message, kind="proxy_error", **extra):
    error = {"message": message, "type": kind}
    error.update(extra)
    return json.dumps({"error": error}).encode("utf-8")


def _says_stream_once(raw):
    """Whether a JSON body that parsed to ``"stream": true`` names ``stream`` only once: with a
    duplicate key, an upstream that keeps the first one would read another value."""
    return raw.count(b'"stream"') == 1 and (raw.find(b"\\u00") < 0 or not ESCAPED_LETTER.search(raw))


def passed_headers(pairs):
    """The upstream's response headers worth passing on; framing and Content-Type are set anew."""
    return [(name, value) for name, value in pairs
            if name.lower() not in NOT_FORWARDED_RESPONSE and name.lower() != "content-type"]


def _header(pairs, name, default):
    return next((value for key, value in pairs if key.lower() == name), default)


def _readable(sock):
    """Whether ``sock`` has data or an end of stream waiting, without blocking."""
    if hasattr(select, "poll"):  # select() fails on descriptors above 1023, which a busy proxy reaches
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class ShieldHandler(http.server.BaseHTTPRequestHandler):
    """Serves the routes; every request is shielded by ``self.server``'s settings."""

    protocol_version = "HTTP/1.1"
    server_version = "retry-shield/" + __version__
    error_content_type = "application/json"
    # Headers and body go out as two writes; with Nagle on, a small body waits for the
    # client's delayed ACK (40 ms on Linux) before it leaves.
    disable_nagle_algorithm = True
    # Buffered output: a small answer leaves with its headers in one write, not two.
    wbufsize = 16 * 1024
    cors_headers = ()  # type: Tuple[Tuple[str, str], ...]

    # -- stdlib hooks -------------------------------------------------------

    def setup(self):
        self.timeout = self.server.config.client_timeout  # a slow client cannot hold a thread forever
        super().setup()

    def handle_expect_100(self):
        """The stdlib writes "100 Continue" but leaves it in our output buffer: send it now."""
        if not super().handle_expect_100():
            return False
        self.wfile.flush()
        return True

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code, message=None, explain=None):
        """Answer with a JSON error instead of the stdlib's HTML page."""
        short, _ = self.responses.get(code, ("Error", ""))
        if self.request_version == "HTTP/0.9":  # a garbage request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        self._send_json(code, json_error_body(message or short, "invalid_request_error"), close=True)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        is_health = path.rstrip("/") == "/health"
        if not self._guard(needs_key=not is_health):
            return
        if is_health:
            self._send_json(200, json.dumps(self.server.health()).encode("utf-8"))
        elif operation_of(path) == "/models":
            self._forward_models()
        else:
            self._route_error()

    def do_POST(self):
        started = time.monotonic()
        if not self._guard():
            return
        split = urllib.parse.urlsplit(self.path)
        operation = operation_of(split.path)
        if operation not in OPERATIONS:
            self._drain_small_body()
            self._route_error()
            return
        try:
            request, raw = self._read_json_body()
        except ClientError as exc:
            self._send_json(exc.status, json_error_body(exc.message, "invalid_request_error", code=exc.code),
                            close=True)
            return
        self.server.count("requests")
        with self.server.in_flight():
            self._shield(operation, split.query, request, raw, started)

    def do_OPTIONS(self):
        """CORS preflight: answered only for origins in ALLOWED_ORIGINS."""
        if not self._guard(needs_key=False):
            return
        requested = self.headers.get("Access-Control-Request-Headers", "")
        allow = [("Allow", "GET, POST, OPTIONS")]
        if self.cors_headers:
            allow += [("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                      ("Access-Control-Allow-Headers", requested or "authorization, api-key, content-type"),
                      ("Access-Control-Max-Age", "600")]
        self._send(204, "text/plain", b"", allow)

    def do_PUT(self):
        if self._guard(needs_key=False):
            self._route_error()

    do_DELETE = do_PATCH = do_HEAD = do_PUT

    # -- guards and routing -----------------------------------------------------

    def _guard(self, needs_key=True):
        """Refuse requests from web pages, rebound host names and, with PROXY_API_KEY, strangers."""
        config = self.server.config
        if not host_allowed(self.headers.get("Host"), config):
            self._refuse(403, "Host %r is not this proxy; use http://127.0.0.1:%d"
                         % (self.headers.get("Host"), self.server.server_address[1]), "host_not_allowed")
            return False
        origin = self.headers.get("Origin")
        if origin is not None:
            if origin.rstrip("/") not in config.allowed_origins:
                self._refuse(403, "origin %r is not allowed; add it to ALLOWED_ORIGINS to let that page "
                             "call the proxy" % origin, "origin_not_allowed")
                return False
            self.cors_headers = (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
        if needs_key and config.proxy_api_key and client_key(self.headers) != config.proxy_api_key:
            self._refuse(401, "missing or wrong proxy key; send PROXY_API_KEY as Authorization: Bearer KEY "
                         "or api-key", "invalid_proxy_key")
            return False
        return True

    def _refuse(self, status, message, code):
        self.server.count("refused")
        logger.warning("refused %s %s from %s: %s", self.command, urllib.parse.urlsplit(self.path).path,
                       self.client_address[0], code)
        self._send_json(status, json_error_body(message, "invalid_request_error", code=code), close=True)

    def _route_error(self):
        path = urllib.parse.urlsplit(self.path).path
        known = path.rstrip("/") == "/health" or operation_of(path) is not None
        if known:
            allowed = "GET" if operation_of(path) == "/models" or path.rstrip("/") == "/health" else "POST"
            self._send_json(405, json_error_body("%s is not allowed on %s; use %s" % (self.command, path, allowed),
                                                 "invalid_request_error"), extra=[("Allow", allowed)], close=True)
        else:
            self._send_json(404, json_error_body(
                "no route %s %s; use POST /v1/responses or /v1/chat/completions" % (self.command, path),
                "invalid_request_error"), close=True)

    def _drain_small_body(self):
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 65536:
            self.rfile.read(int(length))

    # -- request body -----------------------------------------------------------

    def _read_json_body(self):
        """The request's JSON object and its bytes as sent; raise ClientError."""
        config = self.server.config
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._read_chunked(config.max_request_bytes)
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                raise ClientError(411, "Content-Length is required", "length_required")
            if not length.strip().isdigit():
                raise ClientError(400, "Content-Length %r is not a number" % length, "bad_content_length")
            size = int(length)
            if size > config.max_request_bytes:
                raise ClientError(413, "request body of %d bytes is over MAX_REQUEST_BYTES (%d)"
                                  % (size, config.max_request_bytes), "request_too_large")
            raw = self.rfile.read(size)
            if len(raw) < size:
                raise ClientError(400, "request body ended after %d of %d bytes" % (len(raw), size),
                                  "incomplete_body")
        try:
            request = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ClientError(400, "request body is not valid UTF-8", "invalid_json") from None
        except (ValueError, RecursionError) as exc:
            raise ClientError(400, "request body is not valid JSON: %s" % exc, "invalid_json") from None
        if not isinstance(request, dict):
            raise ClientError(400, "request body must be a JSON object, not %s" % type(request).__name__,
                              "invalid_json")
        return request, raw

    def _read_chunked(self, limit):
        parts = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk_size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClientError(400, "malformed chunked request body", "bad_chunked_body") from None
            if chunk_size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return b"".join(parts)
            size += chunk_size
            if size > limit:
                raise ClientError(413, "request body is over MAX_REQUEST_BYTES (%d)" % limit, "request_too_large")
            data = self.rfile.read(chunk_size)
            if len(data) < chunk_size:
                raise ClientError(400, "request body ended early", "incomplete_body")
            parts.append(data)
            self.rfile.readline(16)

    # -- the shield -------------------------------------------------------------

    def _shield(self, operation, query, request, raw, started):
        config = self.server.config
        wants_stream = request.get("stream") is True
        if wants_stream and not config.forced_model and _says_stream_once(raw):
            body = raw  # Codex's case: nothing to change, so its bytes go as they came (no re-encoding)
        else:
            request["stream"] = True
            if config.forced_model:
                request["model"] = config.forced_model
            try:
                body = json.dumps(request, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape ("\ud83d"): keep it an escape
                body = json.dumps(request).encode("ascii")
        url = upstream_url(config.endpoint, operation, query)
        headers = upstream_headers(self.headers.items(), config.api_key, drop_credentials=bool(config.proxy_api_key))
        protocol = "responses" if operation == "/responses" else "chat"
        policy = self.server.retry_policy
        deadline = started + config.total_timeout
        attempts = 0
        while True:
            attempts += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("attempt %d/%d: POST %s (%d bytes, model %s)", attempts, config.max_attempts,
                             redact_url(url), len(body), request.get("model", "-"))
            try:
                answer = attempt(config, url, body, headers, protocol, deadline, self._client_present,
                                 self.server.upstream_sockets, self.server.pool, self.server.buffers)
            except ClientGone:
                self._log_summary(499, attempts, 0, started, request, None, "client gone")
                self.close_connection = True
                return
            except UpstreamFailure as failure:
                wait = policy.next_wait(failure, attempts, time.monotonic() - started)
                if self.server.stopping.is_set():
                    wait = None
                if wait is None:
                    logger.warning("attempt %d/%d failed: %s; giving up", attempts, config.max_attempts,
                                   failure.detail)
                    self._give_up(failure, attempts, started, request)
                    return
                logger.warning("attempt %d/%d failed: %s; retrying in %.1f s", attempts, config.max_attempts,
                               failure.detail, wait)
                self.server.count("retries")
                outcome = self._wait_for_retry(wait)
                if outcome == "stopping":
                    self._give_up(failure, attempts, started, request)
                    return
                if outcome == "gone":
                    self._log_summary(499, attempts, 0, started, request, None, "client gone")
                    self.close_connection = True
                    return
                continue
            try:
                self._deliver(answer, wants_stream, attempts, started, request)
            finally:
                if answer.buffer is not None:
                    answer.body.release()
                    self.server.buffers.give(answer.buffer)
            return

    def _client_present(self):
        """Whether the client still holds its connection open (it has nothing more to send)."""
        try:
            if not _readable(self.connection):
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _wait_for_retry(self, seconds):
        """Sleep ``seconds`` unless the client leaves or the server stops: "go", "gone" or "stopping"."""
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return "go"
            if self.server.stopping.wait(min(remaining, CLIENT_CHECK_INTERVAL)):
                return "stopping"
            if not self._client_present():
                return "gone"

    def _deliver(self, answer, wants_stream, attempts, started, request):
        verdict = answer.verdict
        content_type = _header(answer.headers, "content-type", "application/json")
        headers = passed_headers(answer.headers)
        status, payload, usage, note = answer.status, answer.body, None, ""
        if verdict is not None:
            usage, note = verdict.usage, verdict.outcome
            if wants_stream:
                content_type = "text/event-stream; charset=utf-8"
                headers = [pair for pair in headers if pair[0].lower() != "cache-control"]
                headers.append(("Cache-Control", "no-cache"))
            else:
                content_type = "application/json"
                status, payload = self._as_json(answer)
        self._log_summary(status, attempts, len(answer.body), started, request, usage, note)
        self._send(status, content_type, payload, headers)

    def _as_json(self, answer):
        """The non-streaming JSON equivalent of a buffered stream: (status, body)."""
        verdict = answer.verdict
        if verdict.outcome == StreamVerdict.FAILED:  # as the API answers a non-streaming request
            status = 429 if (verdict.error or {}).get("code") == "insufficient_quota" else 400
            return status, json.dumps({"error": verdict.error}).encode("utf-8")
        if verdict.terminal:  # Responses: the response object of the terminal event
            try:
                event = json.loads(bytes(answer.body[verdict.terminal[0]:verdict.terminal[1]]))
            except ValueError:
                return 502, json_error_body("the upstream's terminal event is not valid JSON", code="bad_stream")
            return 200, json.dumps(event.get("response", event), ensure_ascii=False).encode("utf-8")
        return 200, json.dumps(assemble_chat_completion(answer.body), ensure_ascii=False).encode("utf-8")

    def _give_up(self, failure, attempts, started, request):
        self.server.count("gave_up")
        if failure.kind == "status":  # the upstream's own last answer, as it sent it
            content_type = failure.headers.get("content-type", "application/json")
            self._log_summary(failure.status, attempts, len(failure.body), started, request, None, "gave up")
            self._send(failure.status, content_type, failure.body, passed_headers(failure.headers.items()))
            return
        status = 504 if failure.kind == "timeout" else 502
        message = "upstream failed after %d attempt%s: %s" % (attempts, "" if attempts == 1 else "s", failure.detail)
        payload = json_error_body(message, "proxy_error", code=failure.kind, attempts=attempts,
                                  last_failure=failure.detail)
        self._log_summary(status, attempts, 0, started, request, None, "gave up")
        self._send_json(status, payload)

    def _forward_models(self):
        config = self.server.config
        url = upstream_url(config.endpoint, "/models", urllib.parse.urlsplit(self.path).query)
        conn, target = _open_connection(url, config.connect_timeout)
        try:
            headers = upstream_headers(self.headers.items(), config.api_key,
                                       drop_credentials=bool(config.proxy_api_key))
            conn.request("GET", target, headers=headers)
            conn.sock.settimeout(config.upstream_timeout)
            response = conn.getresponse()
            body = _read_bounded(response, config.max_response_bytes)
            decoder = _decoder_for(response.getheader("Content-Encoding"))
            if decoder is not None:
                body = decoder.decompress(body) + decoder.flush()
            self._send(response.status, response.getheader("Content-Type", "application/json"), body,
                       passed_headers(response.getheaders()))
        except (OSError, http.client.HTTPException, UpstreamFailure, zlib.error) as exc:
            self._send_json(502, json_error_body("cannot list models upstream: %s" % (exc,), code="upstream_error"))
        finally:
            conn.close()

    # -- output -----------------------------------------------------------------

    def _send_json(self, status, payload, extra=(), close=False):
        self._send(status, "application/json", payload, list(extra), close=close)

    def _send(self, status, content_type, payload, extra, close=False):
        if status >= 400:  # an upstream that echoes the key in its error must not pass it on
            for secret in self.server.config.secrets:
                payload = payload.replace(secret.encode("utf-8"), b"***")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in list(extra) + list(self.cors_headers):
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
            if close:
                self._linger()
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def _linger(self):
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

    def _log_summary(self, status, attempts, size, started, request, usage, note=""):
        tokens = ""
        if usage:
            into = usage.get("input_tokens", usage.get("prompt_tokens"))
            out = usage.get("output_tokens", usage.get("completion_tokens"))
            tokens = " tokens=%s/%s" % (into, out)
        logger.info("%s %s %d attempts=%d bytes=%d time=%.2fs model=%s%s%s", self.command,
                    urllib.parse.urlsplit(self.path).path, status, attempts, size, time.monotonic() - started,
                    request.get("model", "-"), tokens, (" (%s)" % note) if note else "")


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------


class ShieldServer(http.server.ThreadingHTTPServer):
    """The threading HTTP server with the settings, counters and shutdown state the handler reads."""

    daemon_threads = True
    block_on_close = False  # drain() waits for requests in flight; idle keep-alive threads need no join
    # The stdlib's backlog of 5 refuses bursts of parallel agents.
    request_queue_size = 4096

    def __init__(self, config, handler=ShieldHandler):
        self.config = config
        self.retry_policy = RetryPolicy.from_config(config)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._counters = collections.Counter()  # type: collections.Counter
        self._active = 0
        self.upstream_sockets = set()  # type: set
        self.pool = ConnectionPool()
        self.buffers = BufferPool()
        super().__init__((config.host, config.port), handler)

    def count(self, name, amount=1):
        with self._lock:
            self._counters[name] += amount

    @contextlib.contextmanager
    def in_flight(self):
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    @property
    def active(self):
        with self._lock:
            return self._active

    def health(self):
        with self._lock:
            counters = dict(self._counters)
            active = self._active
        return {
            "status": "ok",
            "service": SERVICE_NAME,
            "version": __version__,
            "pid": os.getpid(),
            "port": self.server_address[1],
            "uptime_s": round(time.monotonic() - self.started, 1),
            "upstream": urllib.parse.urlsplit(self.config.endpoint).hostname,
            "requests": counters.get("requests", 0),
            "retries": counters.get("retries", 0),
            "gave_up": counters.get("gave_up", 0),
            "in_flight": active,
        }

    def handle_error(self, request, client_address):
        """Log one line, never a traceback on the user's terminal unless --debug."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            logger.debug("client %s: %s", client_address[0], exc.__class__.__name__)
            return
        logger.error("internal error serving %s: %r", client_address[0], exc,
                     exc_info=logger.isEnabledFor(logging.DEBUG))

    def service_actions(self):
        """Called by serve_forever about every half second."""
        self.buffers.trim()

    def server_close(self):
        super().server_close()
        self.pool.close()

    def drain(self, grace):
        """Let requests in flight finish within ``grace`` seconds, then cut their upstream reads short.

        Backoff waits end at once (the client gets the last failure); a request still
        reading after ``grace`` has its upstream socket shut, so it too answers with a
        clean error instead of a dropped connection.
        """
        self.stopping.set()
        end = time.monotonic() + grace
        while self.active and time.monotonic() < end:
            time.sleep(0.05)
        for sock in list(self.upstream_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        end = time.monotonic() + 1.0
        while self.active and time.monotonic() < end:
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


class SecretFilter(logging.Filter):
    """Masks the configured keys in every log record, whatever code wrote it."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = secrets

    def filter(self, record):
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def _load_env_file(argv):
    """Load .env (or --env-file) into os.environ without overriding it; return a warning or None."""
    args, _ = build_arg_parser().parse_known_args(argv)
    path = args.env_file or DEFAULT_ENV_FILE
    if args.env_file and not os.path.exists(path):
        raise ConfigError("--env-file %s does not exist; give the path of your .env file" % path)
    try:
        from dotenv import load_dotenv
    except ImportError:
        return ("python-dotenv is not installed, so %s is not read; settings come from the environment "
                "only (install it: pip install -r requirements.txt)" % path)
    if os.path.isfile(path):
        load_dotenv(path, override=False)
    return None


def _banner(config, server):
    host, port = server.server_address[:2]
    logger.info("retry-shield %s listening on http://%s:%d/v1", __version__, host, port)
    logger.info("upstream: %s%s", redact_url(config.endpoint), " (key set)" if config.api_key else
                " (client credentials passed through)")
    if config.forced_model:
        logger.info("forced model: %s", config.forced_model)
    if not is_loopback_host(host):
        logger.warning("listening on %s: other machines can reach this proxy; clients must send PROXY_API_KEY",
                       host)
    logger.info("retries: up to %d, backoff %gs doubling to %gs, %gs per request, %gs idle timeout",
                config.max_retries, config.retry_base_delay, config.retry_max_delay, config.total_timeout,
                config.upstream_timeout)


def _big_buffers_in_mmap():
    """Ask glibc to keep every large allocation in its own mapping, once and for all.

    Otherwise glibc raises its mmap threshold after the first big answer is freed, and
    the next big buffer grows on the heap, where a realloc can copy it: for a moment two
    copies of the answer. In a mapping, growth is a remap, never a copy.
    """
    if not sys.platform.startswith("linux") or ctypes is None:
        return
    try:
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # another C library: it keeps its own policy


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _big_buffers_in_mmap()
    try:
        warning = _load_env_file(argv)
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        sys.stderr.write("proxy.py: error: %s\n" % exc)
        return 2
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # The format shows none of these, and each costs time on every log line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the logging HOWTO's "Optimization": no stack walk to find the caller
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter(config.secrets))
    if warning:
        logger.warning("%s", warning)
    try:
        server = ShieldServer(config)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            message = "port %d on %s is already in use; stop the other program or set PORT to a free port" % (
                config.port, config.host)
        else:
            message = "cannot listen on %s:%d: %s; check HOST and PORT" % (config.host, config.port,
                                                                         exc.strerror or exc)
        sys.stderr.write("proxy.py: error: %s\n" % message)
        return 2

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _banner(config, server)
    try:
        server.serve_forever()
    finally:
        server.server_close()  # refuse new connections while the ones in flight finish
        server.drain(grace=SHUTDOWN_GRACE)
        logger.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

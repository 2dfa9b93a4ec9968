"""Routing and access: the operation of a path, the upstream URL, redaction, and who may call."""

import base64
import binascii
import functools
import hmac
import ipaddress
import re
import urllib.parse
from typing import Mapping, NamedTuple, Optional, Pattern, Sequence, Tuple

from .replies import Reply, error_reply

OPERATIONS = ("/responses", "/chat/completions")
GET_PATHS = ("/health", "/stats")  # the proxy's own pages, besides the upstream's /models
OPERATION_NAMES = {"responses": "/responses", "chat": "/chat/completions"}
# The status page's paths; a browser that is refused the key there is asked for it as a password.
PAGE_PATHS = ("/", "/status")
ASK_PASSWORD = ("WWW-Authenticate", 'Basic realm="retry-shield status page", charset="UTF-8"')
# A key shorter than this is most likely a placeholder or a typo, and is masked only as a whole value.
SHORT_KEY = 8


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address, without port) names this machine's loopback."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: Optional[str], listen_host: str) -> bool:
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
    if listen_host in ("0.0.0.0", "::", ""):
        return True  # listening everywhere: PROXY_API_KEY is mandatory and does the guarding
    return name == listen_host.strip("[]").lower()


def client_key(headers: Mapping[str, str]) -> str:
    """The key a client sent as ``Authorization: Bearer`` or ``api-key``, or ""."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("api-key", "").strip()


def basic_password(headers: Mapping[str, str]) -> str:
    """The password of an ``Authorization: Basic`` header (the user name is ignored), or ""."""
    auth = headers.get("Authorization", "")
    if auth[:6].lower() != "basic ":
        return ""
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def is_page(path: str) -> bool:
    """Whether ``path`` asks for the status page (``/``, ``/status``, with or without a trailing slash)."""
    return (path.rstrip("/") or "/") in PAGE_PATHS


def for_browser(path: str) -> bool:
    """Whether a browser showing the page asks for ``path`` by itself: the page, and the icon it looks for
    (which then gets its 404 with the page's password instead of a refusal logged every refresh)."""
    return is_page(path) or path == "/favicon.ico"


def operation_of(path: str) -> Optional[str]:
    """The operation a client path asks for (``/responses``, ``/chat/completions``, ``/models``) or None."""
    if path.startswith("/v1/"):
        path = path[3:]
    path = path.rstrip("/")
    if path in OPERATIONS or path == "/models":
        return path
    return None


@functools.lru_cache(maxsize=256)
def upstream_url(endpoint: str, operation: str, client_query: str = "") -> str:
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


def operation_url_protocol(endpoint: str) -> Optional[str]:
    """The protocol a full operation URL names ("responses" or "chat"), or None for a base URL."""
    path = urllib.parse.urlsplit(endpoint).path.rstrip("/")
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/responses"):
        return "responses"
    return None


def upstream_protocol(client_protocol: str, endpoint: str, upstream_api: str) -> Tuple[str, bool]:
    """The protocol to speak upstream, and whether it is only a guess (the client's own, on a base URL).

    UPSTREAM_API=chat or responses says it; with auto, a full operation URL says it; a base URL is
    asked in the client's own protocol, which is the guess an upstream's answer can refute.
    """
    if upstream_api in ("chat", "responses"):
        return upstream_api, False
    named = operation_url_protocol(endpoint)
    if named is not None:
        return named, False
    return client_protocol, True


def redact_url(url: str) -> str:
    """``url`` without credentials or query string, fit for logs and banners."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = "[%s]" % netloc
    if parts.port:
        netloc += ":%d" % parts.port
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@functools.lru_cache(maxsize=16)
def _secret_patterns(secrets: Tuple[str, ...]) -> Tuple[Pattern[str], Pattern[bytes]]:
    # A short key is masked as a whole value only: "k" inside "backoff" is not that key. A
    # long one is masked wherever it stands, even glued to other text ("%3Dsk-...").
    alternatives = []
    for secret in sorted(secrets, key=len, reverse=True):
        escaped = re.escape(secret)
        alternatives.append(escaped if len(secret) >= SHORT_KEY else r"(?<![0-9A-Za-z])%s(?![0-9A-Za-z])" % escaped)
    pattern = "|".join(alternatives)
    return re.compile(pattern), re.compile(pattern.encode("utf-8"))


def mask_secrets(text: str, secrets: Tuple[str, ...]) -> str:
    """``text`` with every whole occurrence of a key replaced by ``***``."""
    if not secrets or not any(secret in text for secret in secrets):
        return text
    return _secret_patterns(secrets)[0].sub("***", text)


def mask_secrets_in_bytes(data: bytes, secrets: Tuple[str, ...]) -> bytes:
    encoded = [secret.encode("utf-8") for secret in secrets]
    if not secrets or not any(secret in data for secret in encoded):
        return data
    return _secret_patterns(secrets)[1].sub(b"***", data)


class Access(NamedTuple):
    """Whether a request may go on: a refusal to send, or None, and the CORS headers for its answer."""

    refusal: Optional[Reply]
    cors: Tuple[Tuple[str, str], ...] = ()
    reason: str = ""  # the refusal's error code, for the log


def check_access(headers: Mapping[str, str], config, port: int, needs_key: bool = True,
                 browser: bool = False) -> Access:
    """Refuse requests from web pages, rebound host names and, with PROXY_API_KEY, strangers.

    ``browser``: a page a person opens, who cannot set a header from the address bar. The key
    may come as the password of HTTP Basic authentication too, and a refusal asks for it.
    """
    host = headers.get("Host")
    if not host_allowed(host, config.host):
        return _refusal(403, "Host %r is not this proxy; use http://127.0.0.1:%d" % (host, port), "host_not_allowed")
    cors: Tuple[Tuple[str, str], ...] = ()
    origin = headers.get("Origin")
    if origin is not None:
        if origin.rstrip("/") not in config.allowed_origins:
            return _refusal(403, "origin %r is not allowed; add it to ALLOWED_ORIGINS to let that page call the proxy"
                            % origin, "origin_not_allowed")
        cors = (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
    if needs_key and config.proxy_api_key and not _has_key(headers, config.proxy_api_key, browser):
        if browser:
            return _refusal(401, "missing or wrong proxy key; give PROXY_API_KEY as the password (any user name), "
                            "or send it as Authorization: Bearer KEY", "invalid_proxy_key", cors, (ASK_PASSWORD,))
        return _refusal(401, "missing or wrong proxy key; send PROXY_API_KEY as Authorization: Bearer KEY or api-key",
                        "invalid_proxy_key", cors)
    return Access(None, cors)


def _refusal(status: int, message: str, code: str, cors: Tuple[Tuple[str, str], ...] = (),
             headers: Sequence[Tuple[str, str]] = ()) -> Access:
    return Access(error_reply(status, message, code, headers=headers, close=True), cors, code)


def _has_key(headers: Mapping[str, str], expected: str, browser: bool) -> bool:
    if _same_key(client_key(headers), expected):
        return True
    return browser and _same_key(basic_password(headers), expected)


def _same_key(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8"))


def route_error(method: str, path: str) -> Reply:
    """405 for a known path asked with the wrong method, 404 for any other path."""
    operation = operation_of(path)
    stripped = path.rstrip("/")
    # "/status", not "/": a POST to "/" is more likely a base URL without /v1
    is_get = stripped in GET_PATHS or stripped == "/status"
    if is_get or operation is not None:
        allowed = "POST" if operation in OPERATIONS else "GET"
        return error_reply(405, "%s is not allowed on %s; use %s" % (method, path, allowed),
                           headers=[("Allow", allowed)], close=True)
    return error_reply(404, "no route %s %s; use POST /v1/responses or /v1/chat/completions" % (method, path),
                       close=True)


def preflight_headers(requested: str, cors: Sequence[Tuple[str, str]]) -> Sequence[Tuple[str, str]]:
    """The headers of a CORS preflight answer: methods and headers only for an allowed origin."""
    allow = [("Allow", "GET, POST, OPTIONS")]
    if cors:
        allow += [("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                  ("Access-Control-Allow-Headers", requested or "authorization, api-key, content-type"),
                  ("Access-Control-Max-Age", "600")]
    return allow

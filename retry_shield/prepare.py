"""Request preparation: a client's JSON body checked, and the request made ready for the upstream."""

import json
import re
from typing import Any, Dict, NamedTuple, Sequence, Tuple

from .errors import ClientError
from .http1 import upstream_headers
from .routes import upstream_url

# A \u escape of an ASCII letter: a key written as "mod\u0065l" is "model" all the same.
ESCAPED_LETTER = re.compile(rb"\\u00(?:[46][1-9A-Fa-f]|[57][0-9Aa])")
PROTOCOL_OF = {"/responses": "responses", "/chat/completions": "chat"}


class Outbound(NamedTuple):
    """A client request made ready for the upstream, and what the record of it needs."""

    operation: str
    client_protocol: str  # "responses" or "chat": what the client speaks
    upstream_protocol: str  # what the upstream is asked in
    url: str
    body: bytes
    headers: Dict[str, str]
    model_asked: str
    model_sent: str
    wants_stream: bool


def parse_request(raw: bytes) -> Dict[str, Any]:
    """The request's JSON object; raises ClientError."""
    try:
        request = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ClientError(400, "request body is not valid UTF-8", "invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise ClientError(400, "request body is not valid JSON: %s" % exc, "invalid_json") from None
    if not isinstance(request, dict):
        raise ClientError(400, "request body must be a JSON object, not %s" % type(request).__name__,
                          "invalid_json")
    return request


def says_stream_once(raw: bytes) -> bool:
    """Whether a JSON body that parsed to ``"stream": true`` names ``stream`` only once: with a
    duplicate key, an upstream that keeps the first one would read another value."""
    return raw.count(b'"stream"') == 1 and (raw.find(b"\\u00") < 0 or not ESCAPED_LETTER.search(raw))


def prepare(operation: str, query: str, request: Dict[str, Any], raw: bytes,
            client_headers: Sequence[Tuple[str, str]], config: Any) -> Outbound:
    """The upstream request for a client's: always streamed, with FORCED_MODEL, to the mapped URL."""
    wants_stream = request.get("stream") is True
    model_asked = str(request.get("model", "-"))
    if wants_stream and not config.forced_model and says_stream_once(raw):
        body = raw  # Codex's case: nothing to change, so its bytes go as they came (no re-encoding)
    else:
        request = dict(request, stream=True)
        if config.forced_model:
            request["model"] = config.forced_model
        try:
            body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape ("\ud83d"): keep it an escape
            body = json.dumps(request).encode("ascii")
    protocol = PROTOCOL_OF[operation]
    return Outbound(
        operation=operation,
        client_protocol=protocol,
        upstream_protocol=protocol,
        url=upstream_url(config.endpoint, operation, query),
        body=body,
        headers=upstream_headers(client_headers, config.api_key, drop_credentials=bool(config.proxy_api_key)),
        model_asked=model_asked,
        model_sent=config.forced_model or model_asked,
        wants_stream=wants_stream,
    )

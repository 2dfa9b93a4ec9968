"""Request preparation: a client's JSON body checked, and the request made ready for the upstream."""

import json
import re
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

from .chat_request import ChatPlan, to_chat
from .responses_request import ResponsesPlan, to_responses
from .errors import ClientError
from .endpoints import Endpoint
from .http1 import upstream_headers
from .replies import json_body
from .routes import OPERATION_NAMES, upstream_protocol, upstream_url

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
    guessed: bool = False  # the upstream protocol is the client's own on a base URL: its answer may refute it
    plan: Union[None, ChatPlan, ResponsesPlan] = None  # set when the request was translated


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
            client_headers: Sequence[Tuple[str, str]], config: Any, endpoint: Optional[Endpoint] = None) -> Outbound:
    """The upstream request for a client's: always streamed, with FORCED_MODEL, in the upstream's
    protocol (translated when the two differ), to the mapped URL.

    ``endpoint``: a fallback's, with its own URL, protocol, model and key (None: the primary).
    """
    if endpoint is None:
        url, api_key, model, api = config.endpoint, config.api_key, config.forced_model, config.upstream_api
    else:
        url, api_key, model, api = endpoint.url, endpoint.api_key, endpoint.model, endpoint.upstream_api
    client_protocol = PROTOCOL_OF[operation]
    protocol, guessed = upstream_protocol(client_protocol, url, api)
    wants_stream = request.get("stream") is True
    model_asked = str(request.get("model", "-"))
    plan = None
    if client_protocol != protocol:
        translated, plan = (to_chat if protocol == "chat" else to_responses)(request)
        if model:
            translated["model"] = model
        body = json_body(translated)
    elif wants_stream and not model and says_stream_once(raw):
        body = raw  # Codex's case: nothing to change, so its bytes go as they came (no re-encoding)
    else:
        request = dict(request, stream=True)
        if model:
            request["model"] = model
        if protocol == "chat" and not wants_stream and "stream_options" not in request:
            request["stream_options"] = {"include_usage": True}  # the assembled answer gets its usage
        body = json_body(request)
    return Outbound(
        operation=operation,
        client_protocol=client_protocol,
        upstream_protocol=protocol,
        url=upstream_url(url, OPERATION_NAMES[protocol], query),
        body=body,
        headers=upstream_headers(client_headers, api_key, drop_credentials=bool(config.proxy_api_key)),
        model_asked=model_asked,
        model_sent=model or model_asked,
        wants_stream=wants_stream,
        guessed=guessed,
        plan=plan,
    )

"""What a client gets: the Reply for each outcome (errors, a delivered answer, a give-up), as data."""

import json
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

from .aggregate import stream_as_json
from .errors import ClientError, UpstreamFailure
from .http1 import header, passed_headers
from .upstream import UpstreamAnswer

JSON = "application/json"
EVENT_STREAM = "text/event-stream; charset=utf-8"


class Reply(NamedTuple):
    """One answer to send: the handler writes it as it is."""

    status: int
    content_type: str
    body: Union[bytes, memoryview]
    headers: Sequence[Tuple[str, str]] = ()
    close: bool = False  # answer with Connection: close and drop the connection after it


def json_error_body(message: str, kind: str = "proxy_error", **extra: Any) -> bytes:
    error = {"message": message, "type": kind}
    error.update(extra)
    return json.dumps({"error": error}).encode("utf-8")


def error_reply(status: int, message: str, code: Optional[str] = None, kind: str = "invalid_request_error",
                headers: Sequence[Tuple[str, str]] = (), close: bool = False) -> Reply:
    """A JSON error in the API's own shape."""
    extra = {} if code is None else {"code": code}
    return Reply(status, JSON, json_error_body(message, kind, **extra), headers, close)


def client_error_reply(error: ClientError) -> Reply:
    return error_reply(error.status, error.message, error.code, close=True)


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, JSON, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def answer_reply(answer: UpstreamAnswer, wants_stream: bool) -> Reply:
    """The reply for a finished attempt: a stream as it came, or its non-streaming JSON."""
    content_type = header(answer.headers, "content-type", JSON)
    headers = passed_headers(answer.headers)
    verdict = answer.verdict
    if verdict is None:  # not a stream: as the upstream sent it
        return Reply(answer.status, content_type, answer.body, headers)
    if wants_stream:
        headers = [pair for pair in headers if pair[0].lower() != "cache-control"]
        headers.append(("Cache-Control", "no-cache"))
        return Reply(answer.status, EVENT_STREAM, answer.body, headers)
    status, value = stream_as_json(answer.body, verdict)
    if value is None:
        return Reply(502, JSON, json_error_body("the upstream's terminal event is not valid JSON",
                                                code="bad_stream"), headers)
    return Reply(status, JSON, json.dumps(value, ensure_ascii=False).encode("utf-8"), headers)


def give_up_reply(failure: UpstreamFailure, attempts: int) -> Reply:
    """The reply once retrying is over: the upstream's own last answer, or the proxy's error."""
    if failure.kind == "status":
        return Reply(failure.status or 502, failure.headers.get("content-type", JSON), failure.body,
                     passed_headers(list(failure.headers.items())))
    status = 504 if failure.kind == "timeout" else 502
    message = "upstream failed after %d attempt%s: %s" % (attempts, "" if attempts == 1 else "s", failure.detail)
    return Reply(status, JSON, json_error_body(message, "proxy_error", code=failure.kind, attempts=attempts,
                                               last_failure=failure.detail))


def reply_for(exchange: Any) -> Reply:
    """The reply for a finished Exchange that has an answer or a failure to give."""
    if exchange.answer is not None:
        return answer_reply(exchange.answer, exchange.client_streamed)
    return give_up_reply(exchange.failure, len(exchange.attempts))

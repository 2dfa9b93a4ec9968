"""What a client gets: the Reply for each outcome (errors, a delivered answer, a give-up), as data."""

import json
import math
import re
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

from .aggregate import stream_as_json
from .refusals import wrong_api_refusal
from .chat_answer import chat_to_response, response_events
from .chat_request import ChatPlan
from .responses_answer import chat_chunks, chat_completion, failed_error
from .responses_reading import responses_answer
from .responses_request import ResponsesPlan
from .errors import ClientError, UpstreamFailure
from .sse import StreamVerdict
from .http1 import header, passed_headers
from .upstream import UpstreamAnswer

JSON = "application/json"
NO_SUCH_PATH = re.compile(r"not found|unknown|invalid url|unexpected endpoint|no route|no such|not supported",
                          re.IGNORECASE)
NAMES_A_MODEL = re.compile(r"model|deployment", re.IGNORECASE)
EVENT_STREAM = "text/event-stream; charset=utf-8"
# The shield's outcome (shield.STOPPED) when the proxy's stop ended a request before it had an answer.
STOPPED = "stopped"


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


def json_body(value: Any) -> bytes:
    """JSON as UTF-8 bytes; a lone surrogate escape ("\\ud83d") from the input stays an escape."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, JSON, json_body(value))


def answer_reply(answer: UpstreamAnswer, wants_stream: bool) -> Reply:
    """The reply for a finished attempt: a stream as it came, or its non-streaming JSON."""
    content_type = header(answer.headers, "content-type", JSON)
    headers = passed_headers(answer.headers)
    verdict = answer.verdict
    if verdict is None:  # not a stream: as the upstream sent it
        return Reply(answer.status, content_type, answer.body, headers)
    headers = [pair for pair in headers if pair[0].lower() != "cache-control"]
    if wants_stream:
        return Reply(answer.status, EVENT_STREAM, answer.body, headers + [("Cache-Control", "no-cache")])
    status, value = stream_as_json(answer.body, verdict)
    if value is None:
        return Reply(502, JSON, json_error_body("the upstream's terminal event is not valid JSON",
                                                code="bad_stream"), headers)
    return Reply(status, JSON, json_body(value), headers)


def translated_reply(answer: UpstreamAnswer, wants_stream: bool, plan: ChatPlan, ids: str,
                     created_at: int) -> Reply:
    """The reply for a Chat Completions answer to a Responses client: its Responses stream or object.

    ``ids`` (unique per request) roots every id of the answer; ``created_at`` is the time in seconds.
    """
    if answer.verdict is None:
        if answer.status != 200:  # an error: the same shape in both APIs
            return answer_reply(answer, wants_stream)
        body = completion_as_stream(answer.body)
        if body is None:
            return Reply(502, JSON, json_error_body("the upstream's JSON answer is not a chat.completion",
                                                    code="bad_answer"), passed_headers(answer.headers))
    else:
        body = answer.body
    headers = [pair for pair in passed_headers(answer.headers) if pair[0].lower() != "cache-control"]
    response = chat_to_response(body, plan, ids, created_at,
                                answer.verdict.outcome if answer.verdict is not None else "")
    if wants_stream:
        return Reply(200, EVENT_STREAM, response_events(response), headers + [("Cache-Control", "no-cache")])
    if response["status"] == "failed":  # as the API answers a non-streaming request
        code = (response["error"] or {}).get("code")
        return Reply(429 if code == "insufficient_quota" else 400, JSON,
                     json.dumps({"error": response["error"]}).encode("utf-8"), headers)
    return Reply(200, JSON, json_body(response), headers)


def completion_as_stream(body: Union[bytes, memoryview]) -> Optional[bytes]:
    """A non-streamed ``chat.completion`` as the one-chunk stream it amounts to, for the translator;
    None when the body is no such object (not JSON, or choices that are not message objects)."""
    try:
        completion = json.loads(bytes(body))
    except ValueError:
        return None
    choices = (completion.get("choices") or []) if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not all(
            isinstance(choice, dict) and isinstance(choice.get("message") or {}, dict) for choice in choices):
        return None
    chunk = dict(completion, object="chat.completion.chunk",
                 choices=[{"index": choice.get("index", 0), "delta": choice.get("message") or {},
                           "finish_reason": choice.get("finish_reason")}
                          for choice in completion.get("choices") or ()])
    return b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\ndata: [DONE]\n\n"


def says_no_such_path(body: Union[bytes, memoryview]) -> bool:
    """Whether a 404's body says the path is unknown (a wrong API), not that a model or deployment is.

    Servers word it in their own ways: "Invalid URL (POST /v1/responses)", {"detail": "Not Found"},
    "Unexpected endpoint or method", "404 page not found", an empty body.
    """
    text = bytes(body[:2000]).decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict):
        error = value.get("error", value.get("detail", ""))
        value = error.get("message", "") if isinstance(error, dict) else error
    text = str(value)
    if NAMES_A_MODEL.search(text):
        return False
    return not text.strip() or NO_SUCH_PATH.search(text) is not None


def wrong_api_reply(answer: UpstreamAnswer, outbound_protocol: str) -> Reply:
    """A 404 from a base URL asked in the client's own protocol: most likely the upstream speaks the other."""
    path = "/responses" if outbound_protocol == "responses" else "/chat/completions"
    message = "the upstream has no %s (HTTP %d); %s" % (path, answer.status, _other_api(outbound_protocol))
    return error_reply(502, message, "wrong_upstream_api", kind="proxy_error")


def wrong_body_reply(answer: UpstreamAnswer, outbound_protocol: str, said: str) -> Reply:
    """A 400 from a base URL that refuses the body as one of the other API (``said``: the words that tell)."""
    sent = "a Responses" if outbound_protocol == "responses" else "a Chat Completions"
    return error_reply(502, "the upstream refused %s request as of another API (HTTP %d: %s); %s" % (
        sent, answer.status, said, _other_api(outbound_protocol)), "wrong_upstream_api", kind="proxy_error")


def _other_api(outbound_protocol: str) -> str:
    return ("it may speak only Chat Completions: set UPSTREAM_API=chat" if outbound_protocol == "responses"
            else "it may speak only the Responses API: set UPSTREAM_API=responses")


def give_up_reply(failure: UpstreamFailure, attempts: int) -> Reply:
    """The reply once retrying is over: the upstream's own last answer, or the proxy's error."""
    if failure.kind == "status":
        return Reply(failure.status or 502, failure.headers.get("content-type", JSON), failure.body,
                     passed_headers(list(failure.headers.items())))
    if failure.kind == "cooling_down":  # with fallbacks: nothing was sent, every endpoint asked for a long wait
        seconds = max(1, int(math.ceil(failure.wait or 0)))
        return Reply(503, JSON, json_error_body(failure.detail, "proxy_error", code="cooling_down", attempts=attempts),
                     [("Retry-After", str(seconds))])
    status = 504 if failure.kind in ("timeout", "paced") else 502
    message = "upstream failed after %d attempt%s: %s" % (attempts, "" if attempts == 1 else "s", failure.detail)
    if not attempts:  # the request's turn to go never came (pacing): no upstream failed
        message = failure.detail
    return Reply(status, JSON, json_error_body(message, "proxy_error", code=failure.kind, attempts=attempts,
                                               last_failure=failure.detail))


def stopping_reply(failure: Optional[UpstreamFailure], attempts: int) -> Reply:
    """The reply when the proxy stops before a request has its answer: a 503 that blames the stop,
    not the upstream, naming the last failure if there was one; the connection is closed after it."""
    if failure is None:  # the stop came before the first attempt
        return error_reply(503, "the proxy is stopping; the request was not sent upstream", "proxy_stopping",
                           kind="proxy_error", close=True)
    if failure.kind == "stopping":
        message = "the proxy is stopping; attempt %d was cut short" % attempts
    else:
        message = "the proxy is stopping; no retry after attempt %d failed: %s" % (attempts, failure.detail)
    return Reply(503, JSON, json_error_body(message, "proxy_error", code="proxy_stopping", attempts=attempts,
                                            last_failure=failure.detail), close=True)


def reply_for(exchange: Any, ids: str, created_at: int) -> Reply:
    """The reply for a finished Exchange that has an answer or a failure to give, or that the stop ended.

    ``ids`` and ``created_at`` (a unique token, the time in seconds) are used only by a translation.
    """
    if exchange.outcome == STOPPED:
        return stopping_reply(exchange.failure, len(exchange.attempts))
    answer = exchange.answer
    if answer is None:
        return give_up_reply(exchange.failure, len(exchange.attempts))
    if answer.status == 404 and exchange.guessed and says_no_such_path(answer.body):
        return wrong_api_reply(answer, exchange.upstream_protocol)
    said = wrong_api_refusal(answer.status, answer.body, exchange.upstream_protocol) if exchange.guessed else None
    if said is not None:
        return wrong_body_reply(answer, exchange.upstream_protocol, said)
    if exchange.plan is None:
        return answer_reply(answer, exchange.client_streamed)
    if exchange.client_protocol == "responses":
        return translated_reply(answer, exchange.client_streamed, exchange.plan, ids, created_at)
    return chat_reply(answer, exchange.client_streamed, exchange.plan, ids, created_at)


def chat_reply(answer: UpstreamAnswer, wants_stream: bool, plan: ResponsesPlan, ids: str, created_at: int) -> Reply:
    """The reply for a Responses answer to a Chat Completions client: its chunk stream or chat.completion.

    A final failure is a chat-shaped error: inside a 200 stream for a streaming client, as chat
    servers send it, else with 400 (429 for insufficient_quota), as today.
    """
    if answer.verdict is None:
        if answer.status != 200 or not _is_response(answer.body):
            return answer_reply(answer, wants_stream)  # an error: the same shape in both APIs
        response = json.loads(bytes(answer.body))
    else:
        response = responses_answer(answer.body, answer.verdict.terminal)
        if answer.verdict.outcome == StreamVerdict.FAILED and response.get("status") != "failed":
            # Judged by a final error event, which a later terminal event does not undo (a Responses client
            # gets that error too). Its flat form's "type" is the event's name, not an error type.
            judged = dict(answer.verdict.error or {})
            if judged.get("type") == "error":
                judged["type"] = None
            response = {"status": "failed", "error": judged}
    headers = [pair for pair in passed_headers(answer.headers) if pair[0].lower() != "cache-control"]
    error = failed_error(response)
    if error is not None and not wants_stream:
        code = (error.get("error") or {}).get("code")
        return Reply(429 if code == "insufficient_quota" else 400, JSON, json_body(error), headers)
    if not wants_stream:
        return Reply(200, JSON, json_body(chat_completion(response, plan, ids, created_at)), headers)
    body = b"data: " + json_body(error) + b"\n\n" if error is not None else chat_chunks(response, plan, ids, created_at)
    return Reply(200, EVENT_STREAM, body, headers + [("Cache-Control", "no-cache")])


def _is_response(body: Union[bytes, memoryview]) -> bool:
    """Whether a 200 JSON body is a Responses ``response`` object (an upstream that did not stream)."""
    try:
        value = json.loads(bytes(body))
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("object") == "response"

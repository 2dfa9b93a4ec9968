"""The shield itself: attempts, waits and give-ups run through injected callables, recorded as an Exchange."""

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

from .chat_request import ChatPlan
from .responses_request import ResponsesPlan
from .errors import ClientGone, UpstreamFailure
from .prepare import Outbound
from .quirks import Quirks, refused_parameter, without
from .refusals import wrong_api_refusal
from .replies import STOPPED, json_body
from .retry import RetryPolicy
from .routes import redact_url
from .sse import StreamVerdict
from .upstream import CLIENT_CHECK_INTERVAL, Upstream, UpstreamAnswer

logger = logging.getLogger(__name__)

# What became of a request.
DELIVERED = "delivered"  # a good answer (complete, incomplete, or a 200 that does not stream)
FINAL = "final"  # an answer no retry can change (a 4xx, a final error code), passed on at once
GAVE_UP = "gave_up"  # retries or time ran out, or the failure is final: the last failure is answered
CLIENT_GONE = "client_gone"  # the client left first: nothing is answered
# STOPPED (replies.STOPPED): the proxy is stopping and no attempt may follow: answered 503 proxy_stopping

# What a wait between attempts ended in.
GO, GONE, STOPPING = "go", "gone", "stopping"

MakeAttempt = Callable[[int], UpstreamAnswer]
Wait = Callable[[float], str]


class AttemptRecord(NamedTuple):
    """One attempt: ``kind`` is "ok" for an answer, else the failure kind (or "client_gone")."""

    number: int
    kind: str
    status: Optional[int]
    detail: str
    seconds: float


@dataclass(frozen=True)
class Exchange:
    """Everything about one client request and what the shield did for it.

    The summary log line, /health and later records are built from it. ``answer`` or
    ``failure`` is what the client is to get; both are None when the client left.
    """

    method: str
    path: str
    client_protocol: str
    upstream_protocol: str
    endpoint: str  # redacted: no key, no query
    model_asked: str
    model_sent: str
    client_streamed: bool
    started: float  # time.monotonic() when the request arrived
    guessed: bool = False  # the upstream protocol was the client's own on a base URL, not known
    plan: Union[None, ChatPlan, ResponsesPlan] = field(default=None, compare=False, repr=False)  # a translation's
    attempts: Tuple[AttemptRecord, ...] = ()
    retries: int = 0  # waits begun before another attempt
    waited: float = 0.0  # seconds spent in those waits
    outcome: str = ""
    status: int = 0  # what the client was answered (499: it left first)
    bytes: int = 0  # of the upstream's answer that decided the outcome
    usage: Optional[dict] = None
    verdict: str = ""  # the stream's verdict when one was delivered
    seconds: float = 0.0
    answer: Optional[UpstreamAnswer] = field(default=None, compare=False, repr=False)
    failure: Optional[UpstreamFailure] = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, method: str, path: str, outbound: Outbound, started: float) -> "Exchange":
        return cls(method=method, path=path, client_protocol=outbound.client_protocol,
                   upstream_protocol=outbound.upstream_protocol, endpoint=redact_url(outbound.url),
                   model_asked=outbound.model_asked, model_sent=outbound.model_sent,
                   client_streamed=outbound.wants_stream, started=started, guessed=outbound.guessed,
                   plan=outbound.plan)


def run(exchange: Exchange, make_attempt: MakeAttempt, wait: Wait, policy: RetryPolicy,
        stopping: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> Exchange:
    """Attempt until an answer can be delivered, the policy gives up, or the client leaves.

    ``make_attempt(number)`` returns an UpstreamAnswer or raises UpstreamFailure or
    ClientGone; ``wait(seconds)`` returns GO, GONE or STOPPING; ``stopping()`` says the
    server is stopping: no attempt or wait begins, and a request that has no answer yet ends
    STOPPED, unless its last failure is final (then it is given up as usual).
    """
    attempts = []
    retries, waited = 0, 0.0
    failure = None
    while True:
        number = len(attempts) + 1
        if stopping():
            return _ended(exchange, clock, attempts, retries, waited, STOPPED, failure=failure, status=503)
        began = clock()
        try:
            answer = make_attempt(number)
        except ClientGone:
            attempts.append(AttemptRecord(number, "client_gone", None, "client gone", clock() - began))
            return _ended(exchange, clock, attempts, retries, waited, CLIENT_GONE, status=499)
        except UpstreamFailure as failed:
            failure = failed
            attempts.append(AttemptRecord(number, failure.kind, failure.status, failure.detail, clock() - began))
            allowed = max(number, policy.max_attempts_for(failure))  # fewer for some kinds (a name not found)
            if failure.retryable and stopping():  # another attempt could help, but none may begin now
                if failure.kind == "stopping":  # the stop cut this attempt short
                    logger.warning("attempt %d/%d %s", number, allowed, failure.detail)
                else:
                    logger.warning("attempt %d/%d failed: %s; not retried: the proxy is stopping", number,
                                   allowed, failure.detail)
                return _ended(exchange, clock, attempts, retries, waited, STOPPED, failure=failure, status=503)
            seconds = policy.next_wait(failure, number, clock() - exchange.started)
            if seconds is None:
                logger.warning("attempt %d/%d failed: %s; giving up", number, allowed, failure.detail)
                return _ended(exchange, clock, attempts, retries, waited, GAVE_UP, failure=failure,
                              size=len(failure.body) if failure.kind == "status" else 0)
            logger.warning("attempt %d/%d failed: %s; retrying in %.1f s", number, allowed, failure.detail,
                           seconds)
            retries += 1
            wait_began = clock()
            ended = wait(seconds)
            waited += clock() - wait_began
            if ended == STOPPING:
                return _ended(exchange, clock, attempts, retries, waited, STOPPED, failure=failure, status=503)
            if ended == GONE:
                return _ended(exchange, clock, attempts, retries, waited, CLIENT_GONE, status=499)
            continue
        verdict = answer.verdict
        attempts.append(AttemptRecord(number, "ok", answer.status, verdict.outcome if verdict else "",
                                      clock() - began))
        final = answer.status != 200 or (verdict is not None and verdict.outcome == StreamVerdict.FAILED)
        return _ended(exchange, clock, attempts, retries, waited, FINAL if final else DELIVERED, answer=answer,
                      size=len(answer.body), status=answer.status, usage=verdict.usage if verdict else None,
                      verdict=verdict.outcome if verdict else "")


def _ended(exchange: Exchange, clock: Callable[[], float], attempts: list, retries: int, waited: float,
           outcome: str, size: int = 0, **fields: Any) -> Exchange:
    return replace(exchange, attempts=tuple(attempts), retries=retries, waited=waited, outcome=outcome,
                   bytes=size, seconds=clock() - exchange.started, **fields)


def upstream_attempts(upstream: Upstream, outbound: Outbound, deadline: float, still_wanted: Callable[[], bool],
                      max_attempts: int, quirks: Quirks) -> MakeAttempt:
    """``make_attempt`` for ``run``: one POST of ``outbound`` through ``upstream`` per call.

    A chat upstream that refuses a parameter the request carries (a 400 naming it) is asked
    again at once without it, and so is every later request to it: ``quirks`` remembers.
    After an attempt lost on a kept-alive connection, the next one opens a new connection.
    """
    url = outbound.url
    fresh = False

    def make_attempt(number: int) -> UpstreamAnswer:
        nonlocal fresh
        refused = quirks.of(url) if outbound.upstream_protocol == "chat" else frozenset()
        body = outbound.body if not refused else json_body(without(json.loads(outbound.body), refused))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("attempt %d/%d: POST %s (%d bytes, model %s)", number, max_attempts,
                         redact_url(url), len(body), outbound.model_sent)
        try:
            answer = upstream.attempt("POST", url, body, outbound.headers, outbound.upstream_protocol, deadline,
                                      still_wanted, fresh=fresh)
        except UpstreamFailure as failure:
            fresh = failure.reused
            raise
        fresh = False
        if outbound.upstream_protocol == "chat" and answer.status == 400 and not (
                outbound.guessed and wrong_api_refusal(answer.status, answer.body, "chat") is not None):
            # A chat body refused as one of the other API is answered at once (naming UPSTREAM_API), even when
            # the refusal also lists a parameter the proxy could drop: without it the body is still refused.
            name = refused_parameter(answer.status, answer.body, json.loads(body))
            if name is not None and quirks.learn(url, name):
                logger.warning("the upstream refused %s; requests to %s go without it from now on", name,
                               redact_url(url))
                raise UpstreamFailure("status", "HTTP 400: the upstream refused %s" % name, status=400,
                                      headers={key.lower(): value for key, value in answer.headers},
                                      body=bytes(answer.body), wait=0.0)
        return answer
    return make_attempt


def waiter(stopping: threading.Event, still_wanted: Callable[[], bool]) -> Wait:
    """``wait`` for ``run``: sleeps unless the client leaves (GONE) or the server stops (STOPPING)."""
    def wait(seconds: float) -> str:
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return GO
            if stopping.wait(min(remaining, CLIENT_CHECK_INTERVAL)):
                return STOPPING
            if not still_wanted():
                return GONE
    return wait


SUMMARY = "%s %s %d attempts=%d bytes=%d time=%.2fs model=%s api=%s->%s%s%s"
NOTES = {GAVE_UP: "gave up", CLIENT_GONE: "client gone", STOPPED: "proxy stopping"}


def summary(exchange: Exchange) -> Tuple[Any, ...]:
    """The arguments of the SUMMARY log line of an exchange."""
    tokens = ""
    usage = exchange.usage
    if usage:
        into = usage.get("input_tokens", usage.get("prompt_tokens"))
        out = usage.get("output_tokens", usage.get("completion_tokens"))
        tokens = " tokens=%s/%s" % (into, out)
    note = NOTES.get(exchange.outcome, exchange.verdict)
    return (exchange.method, exchange.path, exchange.status, len(exchange.attempts), exchange.bytes,
            exchange.seconds, exchange.model_sent, exchange.client_protocol, exchange.upstream_protocol, tokens,
            (" (%s)" % note) if note else "")


def credentials_warning(exchange: Exchange, config: Any) -> Optional[str]:
    """The WARNING line when the upstream refused the credentials (401, 403): the setting is named, never a key."""
    last = exchange.attempts[-1] if exchange.attempts else None
    if last is None or last.kind != "ok" or last.status not in (401, 403):
        return None
    refused = "the upstream refused the credentials (HTTP %d)" % last.status
    if config.api_key:
        return refused + "; check AZURE_API_KEY"
    if config.proxy_api_key:
        return (refused + ": AZURE_API_KEY is empty, and the client's key is PROXY_API_KEY, which is not forwarded, "
                "so no key was sent; set AZURE_API_KEY to the upstream's key")
    return (refused + ": AZURE_API_KEY is empty, so the client's own key was forwarded; set AZURE_API_KEY to the "
            "upstream's key")

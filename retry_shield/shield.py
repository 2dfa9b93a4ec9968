"""The shield itself: attempts, waits and give-ups run through injected callables, recorded as an Exchange."""

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Tuple, Union

from .chat_request import ChatPlan
from .responses_request import ResponsesPlan
from .errors import ClientGone, UpstreamFailure
from .failover import GIVE_UP, MOVE, WAIT_FOR, Course, MakeAttempt, Route
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

# What a wait between attempts, or for a turn to send (pacing), ended in.
GO, GONE, STOPPING = "go", "gone", "stopping"
TIMEOUT = "timeout"  # pacing only: the turn cannot come within TOTAL_TIMEOUT

Wait = Callable[[float], str]
Pace = Callable[[int], Tuple[str, float]]  # the wait for a turn to send to endpoint i: (GO, GONE, ...; seconds)
Observe = Callable[[Mapping[str, str]], None]  # reads each upstream answer's headers (lower-case names)


class AttemptRecord(NamedTuple):
    """One attempt: ``kind`` is "ok" for an answer, else the failure kind (or "client_gone")."""

    number: int
    kind: str
    status: Optional[int]
    detail: str
    seconds: float
    endpoint: int = 0  # its Endpoint.number: 0 the primary, n FALLBACK_n


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
    queued: float = 0.0  # seconds spent waiting for a turn to send (pacing)
    outcome: str = ""
    status: int = 0  # what the client was answered (499: it left first)
    bytes: int = 0  # of the upstream's answer that decided the outcome
    usage: Optional[dict] = None
    verdict: str = ""  # the stream's verdict when one was delivered
    seconds: float = 0.0
    answer: Optional[UpstreamAnswer] = field(default=None, compare=False, repr=False)
    failure: Optional[UpstreamFailure] = field(default=None, compare=False, repr=False)
    served_by: str = ""  # the host whose answer the client got (delivered or final); "" when none did
    tried: Tuple[str, ...] = ()  # the hosts attempted, in order (one entry per stay on an endpoint)
    failover: bool = False  # fallbacks were configured: the summary line names the hosts

    @classmethod
    def of(cls, method: str, path: str, outbound: Outbound, started: float) -> "Exchange":
        return cls(method=method, path=path, client_protocol=outbound.client_protocol,
                   upstream_protocol=outbound.upstream_protocol, endpoint=redact_url(outbound.url),
                   model_asked=outbound.model_asked, model_sent=outbound.model_sent,
                   client_streamed=outbound.wants_stream, started=started, guessed=outbound.guessed,
                   plan=outbound.plan)

    def sent_to(self, outbound: Outbound) -> "Exchange":
        """The exchange as sent to another endpoint: its URL, protocol, model and translation plan."""
        return replace(self, upstream_protocol=outbound.upstream_protocol, endpoint=redact_url(outbound.url),
                       model_sent=outbound.model_sent, guessed=outbound.guessed, plan=outbound.plan)


def run(exchange: Exchange, make_attempt: MakeAttempt, wait: Wait, policy: RetryPolicy,
        stopping: Callable[[], bool], clock: Callable[[], float] = time.monotonic,
        route: Optional[Route] = None, pace: Optional[Pace] = None) -> Exchange:
    """Attempt until an answer can be delivered, the policy gives up, or the client leaves.

    ``make_attempt(number)`` returns an UpstreamAnswer or raises UpstreamFailure or
    ClientGone; ``wait(seconds)`` returns GO, GONE or STOPPING; ``stopping()`` says the
    server is stopping: no attempt or wait begins, and a request that has no answer yet ends
    STOPPED, unless its last failure is final (then it is given up as usual). With a
    ``route`` (fallbacks configured), ``make_attempt`` is the primary's and the attempts go
    where the failover decisions say (see ``Course``). ``pace(endpoint)``, before every
    attempt, waits for its turn to send to that endpoint: anything but GO ends the request
    with nothing more sent (TIMEOUT as a give-up: the last failure, or a "paced" one).
    """
    attempts: List[AttemptRecord] = []
    retries, waited = 0, 0.0
    failure = None
    course = Course(exchange.endpoint, exchange.started, make_attempt, policy, clock, route)

    def finish(attempts: List[AttemptRecord], retries: int, waited: float, outcome: str, size: int = 0,
              **fields: Any) -> Exchange:
        outbound, tried, served_by = course.ending(attempts, outcome in (DELIVERED, FINAL))
        sent = exchange if outbound is None else exchange.sent_to(outbound)
        return replace(sent, attempts=tuple(attempts), retries=retries, waited=waited, outcome=outcome, bytes=size,
                       seconds=clock() - exchange.started, tried=tried, served_by=served_by,
                       failover=route is not None, **fields)

    step = course.start()
    if step.action == GIVE_UP:
        failure = UpstreamFailure("cooling_down", step.why, retryable=False, wait=step.wait)
        logger.warning("not sent: %s", step.why)
        return finish(attempts, retries, waited, GAVE_UP, failure=failure)
    if step.action == WAIT_FOR:
        logger.warning("%s: waiting %.1f s for %s", step.why, step.wait, course.label(step.endpoint))
        _, waited, ended = _waited(wait, step.wait, clock, retries, waited)  # a wait before any attempt, no retry
        if ended != GO:
            return finish(attempts, retries, waited, STOPPED if ended == STOPPING else CLIENT_GONE,
                          status=503 if ended == STOPPING else 499)
    while True:
        number = len(attempts) + 1
        if stopping():
            return finish(attempts, retries, waited, STOPPED, failure=failure, status=503)
        if pace is not None:
            turn, queued = pace(course.current)
            if queued:
                exchange = replace(exchange, queued=exchange.queued + queued)
            if turn != GO:
                return _unpaced(finish, attempts, retries, waited, turn, failure, policy.total_timeout,
                                exchange.queued)
            moved = course.after_queue() if queued else None
            if moved is not None:  # not the queue: a cool-down that began while it waited moves it
                logger.warning("%s; moving to %s", moved.why, course.label(moved.endpoint))
                continue
        began = clock()
        endpoint = course.current
        try:
            answer = course.attempt(number)
        except ClientGone:
            attempts.append(AttemptRecord(number, "client_gone", None, "client gone", clock() - began, endpoint))
            return finish(attempts, retries, waited, CLIENT_GONE, status=499)
        except UpstreamFailure as failed:
            failure = course.in_its_words(failed, endpoint)
            attempts.append(AttemptRecord(number, failure.kind, failure.status, failure.detail, clock() - began,
                                          endpoint))
            allowed = course.allowed(failure, number)
            where = course.where(endpoint)
            if failure.retryable and stopping():  # another attempt could help, but none may begin now
                if failure.kind == "stopping":  # the stop cut this attempt short
                    logger.warning("attempt %d/%d%s %s", number, allowed, where, failure.detail)
                else:
                    logger.warning("attempt %d/%d failed%s: %s; not retried: the proxy is stopping", number,
                                   allowed, where, failure.detail)
                return finish(attempts, retries, waited, STOPPED, failure=failure, status=503)
            step = course.after_failure(failure, number)
            if step.action == GIVE_UP:
                logger.warning("attempt %d/%d failed%s: %s; giving up%s", number, allowed, where, failure.detail,
                               course.because(step))
                return finish(attempts, retries, waited, GAVE_UP, failure=failure,
                              size=len(failure.body) if failure.kind == "status" else 0)
            logger.warning("attempt %d/%d failed%s: %s; %s", number, allowed, where, failure.detail,
                           course.next_words(step))
            retries, waited, ended = _waited(wait, step.wait, clock, retries, waited, step.action != MOVE)
            if ended == STOPPING:
                return finish(attempts, retries, waited, STOPPED, failure=failure, status=503)
            if ended == GONE:
                return finish(attempts, retries, waited, CLIENT_GONE, status=499)
            continue
        verdict = answer.verdict
        attempts.append(AttemptRecord(number, "ok", answer.status, verdict.outcome if verdict else "",
                                      clock() - began, endpoint))
        step = course.misconfigured(answer, number)
        if step is not None:
            answer.give_back()  # not the client's answer: its buffer goes back now, before any wait
            retries, waited, ended = _waited(wait, step.wait, clock, retries, waited, step.action != MOVE)
            if ended != GO:
                return finish(attempts, retries, waited, STOPPED if ended == STOPPING else CLIENT_GONE,
                              failure=failure, status=503 if ended == STOPPING else 499)
            continue
        final = answer.status != 200 or (verdict is not None and verdict.outcome == StreamVerdict.FAILED)
        return finish(attempts, retries, waited, FINAL if final else DELIVERED, answer=answer,
                      size=len(answer.body), status=answer.status, usage=verdict.usage if verdict else None,
                      verdict=verdict.outcome if verdict else "")


def _waited(wait: Wait, seconds: float, clock: Callable[[], float], retries: int, waited: float,
            waits: bool = True) -> Tuple[int, float, str]:
    """One more retry, after ``wait(seconds)`` unless it goes elsewhere at once (``waits`` False)."""
    if not waits:
        return retries + 1, waited, GO
    wait_began = clock()
    ended = wait(seconds)
    return retries + 1, waited + clock() - wait_began, ended


def _unpaced(finish: Callable[..., Exchange], attempts: List[AttemptRecord], retries: int, waited: float,
             turn: str, failure: Optional[UpstreamFailure], total_timeout: float, queued: float) -> Exchange:
    """The end of a request whose turn to send did not come: nothing more was sent for it."""
    if turn == GONE:
        return finish(attempts, retries, waited, CLIENT_GONE, status=499)
    if turn == STOPPING:
        return finish(attempts, retries, waited, STOPPED, failure=failure, status=503)
    after = "after %.1f s waiting for its turn" % queued if queued else "at once"
    if failure is None:
        failure = UpstreamFailure("paced", "nothing was sent upstream: the request's turn (RPM_LIMIT, or the "
                                  "upstream's x-ratelimit headers) could not come within TOTAL_TIMEOUT (%g s); "
                                  "given up %s" % (total_timeout, after), retryable=False)
        logger.warning("%s", failure.detail)
    else:
        logger.warning("attempt %d failed: %s; giving up %s: the next attempt's turn (RPM_LIMIT, or the upstream's "
                       "x-ratelimit headers) could not come within TOTAL_TIMEOUT", len(attempts), failure.detail,
                       after)
    return finish(attempts, retries, waited, GAVE_UP, failure=failure,
                  size=len(failure.body) if failure.kind == "status" else 0)


def upstream_attempts(upstream: Upstream, outbound: Outbound, deadline: float, still_wanted: Callable[[], bool],
                      max_attempts: int, quirks: Quirks, observe: Optional[Observe] = None) -> MakeAttempt:
    """``make_attempt`` for ``run``: one POST of ``outbound`` through ``upstream`` per call.

    A chat upstream that refuses a parameter the request carries (a 400 naming it) is asked
    again at once without it, and so is every later request to it: ``quirks`` remembers.
    After an attempt lost on a kept-alive connection, the next one opens a new connection.
    ``observe`` reads the headers of every answer, failed ones too (pacing's rate-limit headers).
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
            if observe is not None and failure.headers:
                observe(failure.headers)
            raise
        fresh = False
        if observe is not None:
            observe({name.lower(): value for name, value in answer.headers})
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


SUMMARY = "%s %s %d attempts=%d bytes=%d time=%.2fs%s model=%s api=%s->%s%s%s%s"
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
    hosts = " served_by=%s tried=%s" % (exchange.served_by or "-", ",".join(exchange.tried) or "-") \
        if exchange.failover else ""
    queued = " queued=%.2fs" % exchange.queued if exchange.queued else ""
    return (exchange.method, exchange.path, exchange.status, len(exchange.attempts), exchange.bytes,
            exchange.seconds, queued, exchange.model_sent, exchange.client_protocol, exchange.upstream_protocol,
            hosts, tokens, (" (%s)" % note) if note else "")


def credentials_warning(exchange: Exchange, config: Any) -> Optional[str]:
    """The WARNING line when the upstream refused the credentials (401, 403): the setting is named, never a key."""
    last = exchange.attempts[-1] if exchange.attempts else None
    if last is None or last.kind != "ok" or last.status not in (401, 403):
        return None
    refused = "the upstream refused the credentials (HTTP %d)" % last.status
    if last.endpoint:  # a fallback's answer: every endpoint refused, this one last
        return ("FALLBACK_%d refused the credentials (HTTP %d), and no other endpoint could serve in time; check "
                "FALLBACK_%d_API_KEY" % (last.endpoint, last.status, last.endpoint))
    if config.api_key:
        return refused + "; check AZURE_API_KEY"
    if config.proxy_api_key:
        return (refused + ": AZURE_API_KEY is empty, and the client's key is PROXY_API_KEY, which is not forwarded, "
                "so no key was sent; set AZURE_API_KEY to the upstream's key")
    return (refused + ": AZURE_API_KEY is empty, so the client's own key was forwarded; set AZURE_API_KEY to the "
            "upstream's key")

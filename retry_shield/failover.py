"""Failover: the shared cool-downs, where the next attempt goes (decided as data), one request's course."""

import collections
import logging
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .endpoints import Endpoint
from .errors import ClientError, UpstreamFailure
from .prepare import Outbound
from .refusals import wrong_api_refusal
from .retry import RETRIES_BY_KIND, RetryPolicy
from .upstream import UpstreamAnswer

logger = logging.getLogger(__name__)

# The longest cool-down an upstream's wait hint can set: a Retry-After of a day must not park an endpoint for a day.
MAX_COOL_DOWN = 3600.0
# The cool-down after FAILOVER_AFTER_FAILURES failures in a row, and for a fallback that refused the request
# as misconfigured (401, 403, 404).
FAILURES_COOL_DOWN = 60.0
# Answers of a fallback that mean the fallback's own settings are wrong, not that the request is.
MISCONFIGURED = frozenset((401, 403, 404))
# Failures of a fallback that no retry changes and that its own settings cause: an untrusted or missing TLS
# (FALLBACK_n_ENDPOINT), an upstream that speaks the other API (FALLBACK_n_UPSTREAM_API).
MISCONFIGURED_KINDS = {"tls": ("ENDPOINT",), "wrong_api": ("UPSTREAM_API",)}

# One attempt at an endpoint: make_attempt(number) returns an UpstreamAnswer or raises UpstreamFailure, ClientGone.
MakeAttempt = Callable[[int], UpstreamAnswer]

# What comes after a failed attempt.
STAY = "stay"  # wait (the hint or the backoff), then try the same endpoint again
MOVE = "move"  # go to another endpoint at once
WAIT_FOR = "wait_for"  # every endpoint is cooling down: wait for the one that frees first
GIVE_UP = "give_up"  # no attempt may follow: the client gets the last failure (or answer)


class FailoverSettings(NamedTuple):
    after_wait: float = 20.0  # FAILOVER_AFTER_WAIT: a longer wait asked for moves on
    after_failures: int = 3  # FAILOVER_AFTER_FAILURES: this many retryable failures in a row move on


class Step(NamedTuple):
    """Where the next attempt goes: ``action`` (STAY, MOVE, WAIT_FOR, GIVE_UP), the endpoint's index,
    the seconds to wait before it, and until when the current endpoint cools down (None: it does not)."""

    action: str
    endpoint: int
    wait: float = 0.0
    cool_until: Optional[float] = None
    why: str = ""


def hold_cool_down(now: float, hold: float, settings: FailoverSettings) -> Optional[float]:
    """Until when an endpoint cools down whose answer said none remain for ``hold`` seconds (None: it does not).

    A hold as long as a wait that would move a request on (over FAILOVER_AFTER_WAIT) sends new
    requests elsewhere instead of into the queue, as the 429 it spares would have.
    """
    return now + min(hold, MAX_COOL_DOWN) if hold > settings.after_wait else None


def first_free(now: float, until: Sequence[float], deadline: float) -> Step:
    """The first endpoint in order that is not cooling down (MOVE), else the one that frees first if that is
    before ``deadline`` (WAIT_FOR), else GIVE_UP."""
    for index, free_at in enumerate(until):
        if free_at <= now:
            return Step(MOVE, index)
    index = min(range(len(until)), key=lambda i: until[i])
    wait = until[index] - now
    if now + wait >= deadline:
        return Step(GIVE_UP, index, wait, why="every endpoint is cooling down, the first for %.0f s more" % wait)
    return Step(WAIT_FOR, index, wait, why="every endpoint is cooling down")


def after_failure(now: float, current: int, streak: int, asked: Optional[float], wait: float, attempts_left: bool,
                  deadline: float, until: Sequence[float], settings: FailoverSettings, capped: str = "") -> Step:
    """After a retryable failure on endpoint ``current``, the ``streak``-th in a row there.

    ``asked`` is the wait the upstream asked for (any hint form; None: it asked none), ``wait``
    the one before another attempt there (the hint, else the backoff). ``until`` holds, per
    endpoint, the time its cool-down ends. The endpoint is left, and cools down, when it asks
    for more than ``after_wait`` (for that wait, at most an hour), after ``after_failures``
    failures in a row, or when ``capped`` says why no more attempts of this kind go there (both
    for 60 s); it cools down even when no attempt may follow, so that the next requests start
    elsewhere.
    """
    cool_until, why, avoid = None, "", None
    if asked is not None and asked > settings.after_wait:
        cool_until = now + min(asked, MAX_COOL_DOWN)
        why = "it asks to wait %s s (over FAILOVER_AFTER_WAIT=%g)" % (("%.1f" % asked).rstrip("0").rstrip("."),
                                                                     settings.after_wait)
    elif capped:  # not waited for either: another stay there would only fail the same way
        cool_until, why, avoid = now + FAILURES_COOL_DOWN, capped, float("inf")
    elif streak >= settings.after_failures:
        cool_until = now + FAILURES_COOL_DOWN
        why = "%d failures in a row (FAILOVER_AFTER_FAILURES=%d)" % (streak, settings.after_failures)
    if not attempts_left:
        return Step(GIVE_UP, current, cool_until=cool_until, why="no attempt left")
    if cool_until is None:
        if now + wait >= deadline:
            return Step(GIVE_UP, current, why="TOTAL_TIMEOUT would pass")
        return Step(STAY, current, wait)
    until = _cooled(until, current, cool_until if avoid is None else avoid)
    return _elsewhere(first_free(now, until, deadline), cool_until, why)


def after_misconfigured(now: float, current: int, attempts_left: bool, deadline: float,
                        until: Sequence[float]) -> Step:
    """After a fallback showed it is misconfigured (a 401, 403 or 404, a TLS or wrong-API failure): it cools
    down for 60 s, and this request, which would get the same there, goes on to the first endpoint that
    is free (MOVE), else waits for the one that frees first within ``deadline`` (WAIT_FOR); with none
    (or no attempt left), GIVE_UP: the client gets that answer."""
    cool_until = now + FAILURES_COOL_DOWN
    step = first_free(now, _cooled(until, current, float("inf")), deadline)
    if step.action == GIVE_UP or not attempts_left:
        return Step(GIVE_UP, current, cool_until=cool_until,
                    why="no other endpoint can serve in time" if attempts_left else "no attempt left")
    return step._replace(cool_until=cool_until)


def after_queue(now: float, current: int, deadline: float, until: Sequence[float]) -> Optional[Step]:
    """After a request waited its turn for endpoint ``current``: MOVE to the first free endpoint when
    ``current`` began cooling down meanwhile; None (send there as planned) when it did not, or when no
    other is free. The queue alone never moves a request: only a cool-down does."""
    if until[current] <= now:
        return None
    step = first_free(now, until, deadline)
    return step if step.action == MOVE else None


def _cooled(until: Sequence[float], index: int, cool_until: float) -> List[float]:
    cooled = list(until)
    cooled[index] = max(cooled[index], cool_until)
    return cooled


def _elsewhere(step: Step, cool_until: float, why: str) -> Step:
    return step._replace(cool_until=cool_until, why=why if step.action != GIVE_UP else why + "; " + step.why)


class CoolDowns:
    """Until when each endpoint cools down, shared by every request of a server; thread-safe."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until = [0.0] * size
        self._lock = threading.Lock()

    def until(self) -> Tuple[float, ...]:
        with self._lock:
            return tuple(self._until)

    def cool(self, index: int, until: float) -> None:
        """Cool endpoint ``index`` down until ``until``; a longer cool-down already set is kept."""
        with self._lock:
            self._until[index] = max(self._until[index], until)

    def remaining(self) -> Tuple[float, ...]:
        """Seconds each endpoint still cools down (0 when it does not)."""
        now = self.clock()
        return tuple(max(0.0, until - now) for until in self.until())


class Route(NamedTuple):
    """What ``run`` needs to fail over: the endpoints in order, the cool-downs every request shares, the
    settings, and ``prepared(index)``: that endpoint's Outbound and make_attempt (ClientError: it cannot
    take this request, e.g. a translation refuses a parameter)."""

    endpoints: Sequence[Endpoint]
    cool_downs: CoolDowns
    settings: FailoverSettings
    prepared: Callable[[int], Tuple[Outbound, MakeAttempt]]


class Course:
    """Where one request's attempts go: the current endpoint, its failures in a row, the endpoints that cannot
    take the request. It asks the failover decisions (pure) and applies their cool-downs; without a route
    there is one endpoint and the policy alone decides, as before fallbacks existed."""

    def __init__(self, endpoint_url: str, started: float, make_attempt: MakeAttempt, policy: RetryPolicy,
                 clock: Callable[[], float], route: Optional[Route]) -> None:
        self.endpoint_url, self.started, self.policy, self.clock, self.route = (endpoint_url, started, policy,
                                                                                clock, route)
        self.deadline = started + policy.total_timeout
        self.current = 0
        self.streak = 0  # retryable failures in a row on the current endpoint
        self.kinds: Dict[str, int] = collections.Counter()  # failures by kind during this stay there
        self.unusable: Dict[int, str] = {}
        self.prepared: Dict[int, Tuple[Optional[Outbound], MakeAttempt]] = {0: (None, make_attempt)}

    def start(self) -> Step:
        if self.route is None:
            return Step(MOVE, 0)
        return self._go(first_free(self.clock(), self._until(), self.deadline))

    def attempt(self, number: int) -> UpstreamAnswer:
        return self.prepared[self.current][1](number)

    def after_failure(self, failure: UpstreamFailure, number: int) -> Step:
        if self.route is None:
            seconds = self.policy.next_wait(failure, number, self.clock() - self.started)
            return Step(GIVE_UP, 0) if seconds is None else Step(STAY, 0, seconds)
        attempts_left = number <= self.policy.max_retries
        if not failure.retryable:
            if self.current == 0 or failure.kind not in MISCONFIGURED_KINDS:
                return Step(GIVE_UP, self.current)
            return self._misconfigured(MISCONFIGURED_KINDS[failure.kind], attempts_left)
        self.streak += 1
        self.kinds[failure.kind] += 1
        policy = self.policy
        return self._go(after_failure(self.clock(), self.current, self.streak, policy.asked_wait(failure),
                                      policy.wait_after(failure, number), attempts_left, self.deadline,
                                      self._until(), self.route.settings, self._capped(failure.kind)))

    def _capped(self, kind: str) -> str:
        """Why no more attempts of failure ``kind`` go to this endpoint during this stay ("": they may).
        RETRIES_BY_KIND counts per stay here: a fallback's host may resolve where the primary's does not."""
        most = RETRIES_BY_KIND.get(kind)
        if most is None or self.kinds[kind] <= most:
            return ""
        return "%d attempts there failed as %s, the most one endpoint gets for that kind" % (self.kinds[kind], kind)

    def allowed(self, failure: UpstreamFailure, number: int) -> int:
        """The attempts the failure log line counts against (``number`` of ``allowed``)."""
        if self.route is None:
            return max(number, self.policy.max_attempts_for(failure))  # fewer for some kinds (a name not found)
        return self.policy.max_retries + 1  # MAX_RETRIES counts attempts across endpoints

    def in_its_words(self, failure: UpstreamFailure, index: int) -> UpstreamFailure:
        """``failure`` of endpoint ``index``, its detail naming that endpoint's settings (FALLBACK_1_ENDPOINT,
        not AZURE_ENDPOINT): the client and the log are told what to fix where."""
        if self.route is None or not index:
            return failure
        detail = self.route.endpoints[index].in_its_words(failure.detail)
        return failure if detail == failure.detail else failure.told(detail)

    def misconfigured(self, answer: UpstreamAnswer, number: int) -> Optional[Step]:
        """Where a request goes after a fallback's 401, 403 or 404, or its refusal of the body as one of the
        other API (it cools down either way): MOVE or WAIT_FOR; None: the client gets this answer."""
        if self.route is None or self.current == 0:
            return None
        if answer.status in MISCONFIGURED:
            check = ("API_KEY",) if answer.status in (401, 403) else ("ENDPOINT", "MODEL")
            what = "answered HTTP %d" % answer.status
        else:
            outbound = self.prepared[self.current][0]
            if outbound is None or not outbound.guessed or wrong_api_refusal(
                    answer.status, answer.body, outbound.upstream_protocol) is None:
                return None
            check, what = ("UPSTREAM_API",), "refused the body as one of the other API (HTTP %d)" % answer.status
        step = self._misconfigured(check, number <= self.policy.max_retries, what)
        return step if step.action != GIVE_UP else None

    def _misconfigured(self, check: Tuple[str, ...], attempts_left: bool, what: str = "") -> Step:
        """Cool the current fallback down as misconfigured (``check``: the suffixes of its settings to check),
        leave it for the rest of the request, and say where the request goes. With ``what`` (an answer), log it
        here; a failure is logged by run() with the step's ``why``."""
        route = self.route
        assert route is not None
        left = self.current
        endpoint = route.endpoints[left]
        names = " and ".join(endpoint.setting(suffix) for suffix in check)
        self.unusable[left] = "misconfigured"
        step = after_misconfigured(self.clock(), left, attempts_left, self.deadline, self._until())
        step = self._go(step._replace(why="that fallback is misconfigured: check %s" % names
                                      + ("; " + step.why if step.action == GIVE_UP else "")))
        if what:
            logger.warning("%s %s: that fallback is misconfigured (check %s); it cools down for %.0f s; %s",
                           self.label(left), what, names, FAILURES_COOL_DOWN, self._then(step))
        return step

    def _then(self, step: Step) -> str:
        if step.action == MOVE:
            return "moving to %s" % self.label(step.endpoint)
        if step.action == WAIT_FOR:
            return "every other endpoint is cooling down: waiting %.1f s for %s" % (step.wait,
                                                                                   self.label(step.endpoint))
        return "no other endpoint can serve within TOTAL_TIMEOUT, so the client gets this answer"

    def after_queue(self) -> Optional[Step]:
        """After a wait for its turn: MOVE (applied) when the current endpoint began cooling down meanwhile
        and another is free; None: send as planned."""
        if self.route is None:
            return None
        left = self.current
        step = after_queue(self.clock(), left, self.deadline, self._until())
        while step is not None and not self._ready(step.endpoint):
            step = after_queue(self.clock(), left, self.deadline, self._until())
        if step is None:
            return None
        self._move(step.endpoint)
        return step._replace(why="%s began cooling down while this request waited its turn" % self.label(left))

    def _go(self, step: Step) -> Step:
        """Apply a decision: cool the current endpoint down, prepare the next (another if it cannot take the
        request), and move there."""
        route = self.route
        assert route is not None
        if step.cool_until is not None:
            route.cool_downs.cool(self.current, step.cool_until)
        while step.action in (MOVE, WAIT_FOR) and not self._ready(step.endpoint):
            again = first_free(self.clock(), self._until(), self.deadline)
            step = again._replace(cool_until=step.cool_until, why="; ".join(filter(None, (step.why, again.why))))
        if step.action != GIVE_UP and step.endpoint != self.current:
            self._move(step.endpoint)
        return step

    def _move(self, index: int) -> None:
        self.current, self.streak = index, 0
        self.kinds.clear()

    def _ready(self, index: int) -> bool:
        if index in self.prepared:
            return True
        assert self.route is not None
        try:
            self.prepared[index] = self.route.prepared(index)
        except ClientError as exc:
            self.unusable[index] = exc.message
            logger.warning("%s cannot take this request: %s; it is skipped", self.label(index), exc.message)
            return False
        return True

    def _until(self) -> List[float]:
        assert self.route is not None
        until = list(self.route.cool_downs.until())
        for index in self.unusable:
            until[index] = float("inf")
        return until

    def host(self, index: int) -> str:
        return self.route.endpoints[index].host if self.route else Endpoint(0, self.endpoint_url).host

    def label(self, index: int) -> str:
        """``FALLBACK_1 (host)``, ``the primary (host)``."""
        assert self.route is not None
        return "%s (%s)" % (self.route.endpoints[index].name, self.host(index))

    def where(self, index: int) -> str:
        return " on %s" % self.host(index) if self.route else ""

    def because(self, step: Step) -> str:
        return " (%s)" % step.why if self.route and step.why else ""

    def next_words(self, step: Step) -> str:
        """What the failure log line says comes next."""
        if step.action == STAY:
            return "retrying in %.1f s" % step.wait
        left = "it cools down for %.0f s (%s)" % ((step.cool_until or 0) - self.clock(), step.why) \
            if step.cool_until is not None else step.why
        if step.action == MOVE:
            return "%s; moving to %s" % (left, self.label(step.endpoint))
        return "%s; every endpoint is cooling down: waiting %.1f s for %s" % (left, step.wait,
                                                                             self.label(step.endpoint))

    def ending(self, attempts: Sequence[Any], served: bool) -> Tuple[Optional[Outbound], Tuple[str, ...], str]:
        """For the record: the Outbound of the last attempt's endpoint (None: the primary's), the hosts tried
        (one entry per stay on an endpoint), and the host that served the answer ("" if ``served`` is False)."""
        index = attempts[-1].endpoint if attempts else self.current
        stays = [attempt.endpoint for number, attempt in enumerate(attempts)
                 if number == 0 or attempts[number - 1].endpoint != attempt.endpoint]
        return self.prepared[index][0], tuple(self.host(stay) for stay in stays), self.host(index) if served else ""

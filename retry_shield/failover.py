"""Failover: the endpoints, the cool-down table they share, where the next attempt goes (decided as data), and
one request's course through the endpoints."""

import logging
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .endpoints import Endpoint
from .errors import ClientError, UpstreamFailure
from .prepare import Outbound
from .retry import RetryPolicy
from .upstream import UpstreamAnswer

logger = logging.getLogger(__name__)

# The longest cool-down an upstream's wait hint can set: a Retry-After of a day must not park an endpoint for a day.
MAX_COOL_DOWN = 3600.0
# The cool-down after FAILOVER_AFTER_FAILURES failures in a row, and for a fallback that refused the request
# as misconfigured (401, 403, 404).
FAILURES_COOL_DOWN = 60.0
# Answers of a fallback that mean the fallback's own settings are wrong, not that the request is.
MISCONFIGURED = frozenset((401, 403, 404))

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
                  deadline: float, until: Sequence[float], settings: FailoverSettings) -> Step:
    """After a retryable failure on endpoint ``current``, the ``streak``-th in a row there.

    ``asked`` is the wait the upstream asked for (any hint form; None: it asked none), ``wait``
    the one before another attempt there (the hint, else the backoff). ``until`` holds, per
    endpoint, the time its cool-down ends. The endpoint is left, and cools down, when it asks
    for more than ``after_wait`` (for that wait, at most an hour) or after ``after_failures``
    failures in a row (for 60 s); it cools down even when no attempt may follow, so that the
    next requests start elsewhere.
    """
    cool_until, why = None, ""
    if asked is not None and asked > settings.after_wait:
        cool_until = now + min(asked, MAX_COOL_DOWN)
        why = "it asks to wait %.0f s (over FAILOVER_AFTER_WAIT=%g)" % (asked, settings.after_wait)
    elif streak >= settings.after_failures:
        cool_until = now + FAILURES_COOL_DOWN
        why = "%d failures in a row (FAILOVER_AFTER_FAILURES=%d)" % (streak, settings.after_failures)
    if not attempts_left:
        return Step(GIVE_UP, current, cool_until=cool_until, why="no attempt left")
    if cool_until is None:
        if now + wait >= deadline:
            return Step(GIVE_UP, current, why="TOTAL_TIMEOUT would pass")
        return Step(STAY, current, wait)
    return _elsewhere(first_free(now, _cooled(until, current, cool_until), deadline), cool_until, why)


def after_misconfigured(now: float, current: int, attempts_left: bool, deadline: float,
                        until: Sequence[float]) -> Step:
    """After a fallback answered 401, 403 or 404: it cools down for 60 s and the request moves on
    at once to an endpoint that is not cooling down; with none (or no attempt left), GIVE_UP: the
    client gets that answer."""
    cool_until = now + FAILURES_COOL_DOWN
    step = first_free(now, _cooled(until, current, cool_until), deadline)
    if step.action != MOVE or not attempts_left:
        return Step(GIVE_UP, current, cool_until=cool_until, why="no other endpoint is free")
    return step._replace(cool_until=cool_until)


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
        if not failure.retryable:
            return Step(GIVE_UP, self.current)
        self.streak += 1
        policy = self.policy
        return self._go(after_failure(self.clock(), self.current, self.streak, policy.asked_wait(failure),
                                      policy.wait_after(failure, number), number < policy.max_attempts_for(failure),
                                      self.deadline, self._until(), self.route.settings))

    def misconfigured(self, answer: UpstreamAnswer, number: int) -> bool:
        """Whether a fallback's 401, 403 or 404 sends the request on to another endpoint (it cools down either
        way); False: the client gets this answer."""
        if self.route is None or self.current == 0 or answer.status not in MISCONFIGURED:
            return False
        left = self.current
        step = self._go(after_misconfigured(self.clock(), left, number <= self.policy.max_retries,
                                            self.deadline, self._until()))
        endpoint = self.route.endpoints[left]
        check = endpoint.setting("API_KEY") if answer.status in (401, 403) else \
            "%s and %s" % (endpoint.setting("ENDPOINT"), endpoint.setting("MODEL"))
        logger.warning("%s answered HTTP %d: that fallback is misconfigured (check %s); it cools down for %.0f s; %s",
                       self.label(left), answer.status, check, (step.cool_until or 0) - self.clock(),
                       "moving to %s" % self.label(step.endpoint) if step.action == MOVE else
                       "no other endpoint is free, so the client gets this answer")
        return step.action == MOVE

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
            self.current, self.streak = step.endpoint, 0
        return step

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

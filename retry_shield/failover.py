"""Failover: the endpoints, the cool-down table they share, and where the next attempt goes, decided as data."""

import threading
import time
import urllib.parse
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

# The longest cool-down an upstream's wait hint can set: a Retry-After of a day must not park an endpoint for a day.
MAX_COOL_DOWN = 3600.0
# The cool-down after FAILOVER_AFTER_FAILURES failures in a row, and for a fallback that refused the request
# as misconfigured (401, 403, 404).
FAILURES_COOL_DOWN = 60.0
# Answers of a fallback that mean the fallback's own settings are wrong, not that the request is.
MISCONFIGURED = frozenset((401, 403, 404))

PRIMARY_SETTINGS = {"ENDPOINT": "AZURE_ENDPOINT", "API_KEY": "AZURE_API_KEY", "MODEL": "FORCED_MODEL",
                    "UPSTREAM_API": "UPSTREAM_API"}

# What comes after a failed attempt.
STAY = "stay"  # wait (the hint or the backoff), then try the same endpoint again
MOVE = "move"  # go to another endpoint at once
WAIT_FOR = "wait_for"  # every endpoint is cooling down: wait for the one that frees first
GIVE_UP = "give_up"  # no attempt may follow: the client gets the last failure (or answer)


class Endpoint(NamedTuple):
    """One upstream the proxy may send to: number 0 is the primary (AZURE_ENDPOINT), n is FALLBACK_n.

    ``model`` replaces the request's model when set (FALLBACK_n_MODEL, else FORCED_MODEL).
    A pacer or a counter is keyed by ``number``.
    """

    number: int
    url: str
    api_key: str = ""
    model: str = ""
    upstream_api: str = "auto"

    @property
    def host(self) -> str:
        """The host as logs and /health show it: ``name`` or ``name:port``; never a key or a path."""
        parts = urllib.parse.urlsplit(self.url)
        name = parts.hostname or ""
        if ":" in name:
            name = "[%s]" % name
        return "%s:%d" % (name, parts.port) if parts.port else name

    @property
    def name(self) -> str:
        """How logs name it: the primary, or FALLBACK_n."""
        return "the primary" if self.number == 0 else "FALLBACK_%d" % self.number

    def setting(self, suffix: str) -> str:
        """The name of its setting ``suffix`` (ENDPOINT, API_KEY, MODEL, UPSTREAM_API): FALLBACK_n_API_KEY
        for a fallback, the primary's own (AZURE_API_KEY, FORCED_MODEL, UPSTREAM_API) for the primary."""
        if self.number:
            return "FALLBACK_%d_%s" % (self.number, suffix)
        return PRIMARY_SETTINGS[suffix]


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

"""Pacing per endpoint: the RPM_LIMIT token bucket, the hold the upstream's x-ratelimit headers ask for, the queue."""

import bisect
import itertools
import logging
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from .endpoints import Endpoint
from .retry import parse_duration
from .shield import GO, GONE, STOPPING, TIMEOUT
from .upstream import CLIENT_CHECK_INTERVAL

logger = logging.getLogger(__name__)

# Float error in the bucket's arithmetic: a token this close to whole is whole.
EPSILON = 1e-9
RATE_LIMIT_KINDS = ("requests", "tokens")


def hold_from_headers(headers: Mapping[str, str]) -> Optional[Tuple[str, float]]:
    """``(kind, seconds)`` when the upstream says no requests (or tokens) remain and when that resets, else None.

    ``headers`` have lower-case names. Both kinds say so: the longer reset wins.
    """
    found: Optional[Tuple[str, float]] = None
    for kind in RATE_LIMIT_KINDS:
        remaining, reset = headers.get("x-ratelimit-remaining-" + kind), headers.get("x-ratelimit-reset-" + kind)
        if remaining is None or reset is None:
            continue
        try:
            left = float(remaining)
        except ValueError:
            continue
        seconds = parse_duration(reset)
        if left > 0 or not seconds:  # unreadable, or already reset
            continue
        if found is None or seconds > found[1]:
            found = (kind, seconds)
    return found


class Ticket:
    """One request's place in an endpoint's line: by when the request reached the proxy, then by joining."""

    __slots__ = ("order", "wake")

    def __init__(self, arrived: float, number: int) -> None:
        self.order = (arrived, number)
        self.wake = threading.Event()  # set when the ticket may have become first, or the proxy stops

    def __lt__(self, other: "Ticket") -> bool:
        return self.order < other.order


class Line:
    """The requests waiting to go to one endpoint, and when the first may go. Pure: every time is given.

    A request may go when it is first in line, the upstream's hold is over, and (with a rate)
    the bucket has a whole token. The bucket holds one second's worth, at least 1, and refills
    at ``rpm / 60`` per second; it fills during a hold too, so that the held requests go at its end
    as a burst of that size, then evenly.
    """

    def __init__(self, rpm: float, now: float) -> None:
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.stamp = now  # when ``tokens`` was counted
        self.held_until = float("-inf")
        self.waiting: List[Ticket] = []
        self._numbers = itertools.count()

    def join(self, arrived: float) -> Ticket:
        """A place for a request that reached the proxy at ``arrived``: behind every earlier one."""
        ticket = Ticket(arrived, next(self._numbers))
        bisect.insort(self.waiting, ticket)
        return ticket

    def leave(self, ticket: Ticket) -> Optional[Ticket]:
        """Take ``ticket`` out of the line, using nothing; the new first ticket if it was first."""
        place = self.place(ticket)
        if place is None:
            return None
        del self.waiting[place]
        return self.waiting[0] if place == 0 and self.waiting else None

    def place(self, ticket: Ticket) -> Optional[int]:
        """How many tickets are ahead of ``ticket``, or None if it is not in the line."""
        place = bisect.bisect_left(self.waiting, ticket)  # every ticket's order is its own
        return place if place < len(self.waiting) and self.waiting[place] is ticket else None

    def earliest(self, ticket: Ticket, now: float) -> float:
        """The earliest time ``ticket`` may go: every ticket ahead of it needs a token first.

        A lower bound: a request that leaves the line can only make it sooner; a longer hold or
        a request joining ahead (an older request's retry), later.
        """
        start = max(now, self.held_until)
        if not self.rate:
            return start
        need = (self.place(ticket) or 0) + 1 - self._tokens_at(start)
        return start if need <= EPSILON else start + need / self.rate

    def go(self, ticket: Ticket, now: float) -> bool:
        """Whether ``ticket`` goes now; if so it leaves the line and takes its token."""
        if not self.waiting or self.waiting[0] is not ticket or self.earliest(ticket, now) > now:
            return False
        self.waiting.pop(0)
        if self.rate:
            self.tokens = self._tokens_at(now) - 1.0
            self.stamp = now
        return True

    def hold(self, seconds: float, now: float) -> bool:
        """Hold every request until ``now + seconds``; True when no hold was on before (a new one begins)."""
        began = self.held_until <= now
        self.held_until = max(self.held_until, now + seconds)
        return began

    def _tokens_at(self, when: float) -> float:
        return min(self.capacity, self.tokens + max(0.0, when - self.stamp) * self.rate)


class Pacer:
    """The line of one endpoint, shared by every thread that sends there: the blocking wait for a turn."""

    def __init__(self, name: str, rpm: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.rpm = rpm
        self.clock = clock
        self._lock = threading.Lock()
        self.line = Line(rpm, clock())

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self.line.waiting)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Read an upstream answer's headers (lower-case names): a hold begins if it says nothing remains."""
        found = hold_from_headers(headers)
        if found is None:
            return
        kind, seconds = found
        with self._lock:
            began = self.line.hold(seconds, self.clock())
        if began:
            logger.info("upstream %s says 0 %s remain; holding new requests for %.1f s", self.name, kind, seconds)

    def wait_turn(self, arrived: float, deadline: float, still_wanted: Callable[[], bool],
                  stopping: threading.Event) -> Tuple[str, float]:
        """Wait for the turn of a request that reached the proxy at ``arrived``: (outcome, seconds queued).

        GO: send it now. GONE: the client left. STOPPING: the proxy is stopping. TIMEOUT:
        its turn cannot come before ``deadline``. Only GO uses a token; any other end
        leaves the line at once, and the next request moves up.
        """
        began = self.clock()
        with self._lock:
            ticket = self.line.join(arrived)
            if self.line.go(ticket, began):
                self._wake_first()  # a bucket of several tokens lets the next go too
                return GO, 0.0
        outcome = ""
        try:
            while not outcome:
                ticket.wake.clear()  # before looking: a wake-up after this is not lost
                outcome, pause = self._look(ticket, deadline, stopping)
                if not outcome and not still_wanted():
                    outcome = GONE
                if not outcome:
                    ticket.wake.wait(pause)
            return outcome, self.clock() - began
        finally:
            if outcome != GO:
                with self._lock:
                    first = self.line.leave(ticket)
                if first is not None:
                    first.wake.set()

    def _look(self, ticket: Ticket, deadline: float, stopping: threading.Event) -> Tuple[str, float]:
        """GO, STOPPING or TIMEOUT for a waiting ticket, or "" and how long to wait before looking again."""
        with self._lock:
            now = self.clock()
            if stopping.is_set():
                return STOPPING, 0.0
            if self.line.go(ticket, now):
                self._wake_first()
                return GO, 0.0
            turn = self.line.earliest(ticket, now)
            first = self.line.place(ticket) == 0
        if turn >= deadline:
            return TIMEOUT, 0.0
        # The first waits for its time; the others until they are first (they are woken then).
        return "", min(turn - now, CLIENT_CHECK_INTERVAL) if first else CLIENT_CHECK_INTERVAL

    def wake_all(self) -> None:
        """Have every waiting request look again at once (the proxy is stopping)."""
        with self._lock:
            for ticket in self.line.waiting:
                ticket.wake.set()

    def _wake_first(self) -> None:
        if self.line.waiting:
            self.line.waiting[0].wake.set()


class Pacers:
    """One Pacer per endpoint, made on first use and kept for the server's life: the limits hold across requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._pacers: Dict[int, Pacer] = {}

    def pacer_for(self, endpoint: Endpoint) -> Pacer:
        """The Pacer of ``endpoint``, with its ``rpm_limit`` requests a minute (0: no limit).

        Keyed by its number, not its URL: a fallback may share the primary's URL (another
        deployment or key on the same resource) and still has its own quota.
        """
        with self._lock:
            pacer = self._pacers.get(endpoint.number)
            if pacer is None:
                pacer = self._pacers[endpoint.number] = Pacer(endpoint.host or "upstream", endpoint.rpm_limit,
                                                              self.clock)
            return pacer

    @property
    def queued(self) -> int:
        """Requests waiting for their turn, at every endpoint."""
        with self._lock:
            pacers = list(self._pacers.values())
        return sum(pacer.queued for pacer in pacers)

    def wake_all(self) -> None:
        with self._lock:
            pacers = list(self._pacers.values())
        for pacer in pacers:
            pacer.wake_all()

"""Retry decisions: which statuses are worth another attempt, the upstream's wait hints, and the backoff."""

import email.utils
import random
import re
import time
from typing import Any, Callable, Mapping, Optional

from .errors import UpstreamFailure

RETRYABLE_STATUSES = frozenset((408, 409, 429))
HINT_IN_MESSAGE = re.compile(
    r"(?:try again in|retry after)\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+(?![a-z])|\d+(?:\.\d+)?)"
    r"\s*(milliseconds?|seconds?|secs?|ms|s)?\b",
    re.IGNORECASE,
)
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
# Failure kinds retried fewer times than MAX_RETRIES says: a name that does not resolve is almost
# always a mistake in AZURE_ENDPOINT, and minutes of retries would only hide it.
RETRIES_BY_KIND = {"dns": 2}


def parse_duration(text: str) -> Optional[float]:
    """Seconds in ``6m0s``, ``1s``, ``12ms``, ``1h2m`` or a plain number; None if unreadable."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _left(remaining: Optional[str]) -> bool:
    """Whether a rate limit's remaining count says some are left: its reset is then not what to wait for."""
    try:
        return remaining is not None and float(remaining) > 0
    except ValueError:
        return False


def retry_hint(headers: Mapping[str, str], message: str = "", now: Optional[float] = None) -> Optional[float]:
    """The wait in seconds the upstream asks for, if it says: headers first, then its message."""
    headers = {name.lower(): value for name, value in headers.items()}
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in headers:
        value = headers["retry-after"].strip()
        seconds = parse_duration(value) if value.replace(".", "", 1).isdigit() else None
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                now = time.time() if now is None else now
                seconds = max(0.0, when.timestamp() - now)
        if seconds is not None:
            return seconds
    resets = [parse_duration(headers["x-ratelimit-reset-" + kind]) for kind in ("requests", "tokens")
              if "x-ratelimit-reset-" + kind in headers and not _left(headers.get("x-ratelimit-remaining-" + kind))]
    resets = [seconds for seconds in resets if seconds is not None]
    if resets:
        return max(resets)
    match = HINT_IN_MESSAGE.search(message or "")
    if match:
        amount, unit = match.group(1).lower(), (match.group(2) or "s").lower()
        if not amount.replace(".", "", 1).isdigit():  # a duration such as 1m2.5s or 250ms
            return parse_duration(amount)
        return float(amount) / (1000.0 if unit.startswith("m") else 1.0)
    return None


class RetryPolicy:
    """Decides, after a failed attempt, how long to wait before the next one, or to give up."""

    def __init__(self, max_retries: int, base_delay: float, max_delay: float, total_timeout: float,
                 rng: Optional[Callable[[], float]] = None) -> None:
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.total_timeout = total_timeout
        self.random = rng or random.random

    @classmethod
    def from_config(cls, config: Any) -> "RetryPolicy":
        return cls(config.max_retries, config.retry_base_delay, config.retry_max_delay, config.total_timeout)

    def backoff(self, retry_number: int) -> float:
        """Progressive wait before retry ``retry_number`` (0 for the first), with jitter."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(retry_number, 32))
        return ceiling * (0.75 + 0.25 * self.random())

    def max_attempts_for(self, failure: UpstreamFailure) -> int:
        """Attempts a request may make when its last one failed as ``failure`` did."""
        return min(self.max_retries, RETRIES_BY_KIND.get(failure.kind, self.max_retries)) + 1

    def next_wait(self, failure: UpstreamFailure, attempts_made: int, elapsed: float) -> Optional[float]:
        """Seconds to wait before the next attempt, or None to give up.

        ``attempts_made`` counts attempts so far (1 after the first); ``elapsed`` is the
        time since the request arrived. An upstream hint (Retry-After and friends)
        wins over the backoff, but never stretches the request past total_timeout. Some
        kinds have fewer retries (RETRIES_BY_KIND), counted over all the request's attempts.
        A kept-alive connection reset after the request went out is retried at once:
        most often the upstream closed it idle just as the request was sent, and the
        next attempt goes out on a new connection (a reset there waits the backoff).
        """
        if not failure.retryable or attempts_made >= self.max_attempts_for(failure):
            return None
        wait = self.wait_after(failure, attempts_made)
        if elapsed + wait >= self.total_timeout:
            return None
        return wait

    def wait_after(self, failure: UpstreamFailure, attempts_made: int) -> float:
        """The wait before another attempt at the same endpoint: the hint (``asked_wait``), else the backoff."""
        hint = self.asked_wait(failure)
        return hint if hint is not None else self.backoff(attempts_made - 1)

    @staticmethod
    def asked_wait(failure: UpstreamFailure) -> Optional[float]:
        """The wait asked for before another attempt, or None: the proxy's own (``failure.wait``), none after a
        kept-alive connection's reset, else the upstream's hint in any form ``retry_hint`` reads."""
        if failure.wait is not None:
            return failure.wait
        if failure.kind == "reset" and failure.reused:
            return 0.0
        return retry_hint(failure.headers, failure.message)

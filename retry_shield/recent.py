"""What the status page shows of the recent past: the last usage records and requests and retries per minute."""

import collections
from typing import Any, Deque, Dict, List, NamedTuple

LAST_REQUESTS = 50
MINUTES = 60


class Minute(NamedTuple):
    """One minute of the chart: its start (wall clock, seconds) and what ended in it."""

    start: float
    requests: int
    retries: int


class Recent:
    """The last ``size`` usage records and the per-minute counts of the last ``minutes`` minutes.

    Bounded whatever the traffic: a deque of records and one bucket per minute that saw a
    request. Not locked: the server calls it under its own lock. Time is passed in.
    """

    def __init__(self, size: int = LAST_REQUESTS, minutes: int = MINUTES) -> None:
        self.minutes = minutes
        self._records: Deque[Dict[str, Any]] = collections.deque(maxlen=size)
        self._buckets: Deque[List[int]] = collections.deque(maxlen=minutes)  # [minute number, requests, retries]

    def add(self, record: Dict[str, Any], now: float) -> None:
        """Keep ``record`` (a usage_record) that ended at ``now`` (wall clock)."""
        self._records.append(record)
        minute = int(now // 60)
        # A clock set back counts in the newest minute instead of opening an older one.
        if not self._buckets or minute > self._buckets[-1][0]:
            self._buckets.append([minute, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += record["retries"]

    def records(self) -> List[Dict[str, Any]]:
        """The kept records, newest first."""
        return list(reversed(self._records))

    def per_minute(self, now: float) -> List[Minute]:
        """One Minute for each of the last ``minutes`` minutes up to ``now``'s, oldest first, zeros included."""
        last = int(now // 60)
        counts = {bucket[0]: bucket for bucket in self._buckets}
        series = []
        for minute in range(last - self.minutes + 1, last + 1):
            bucket = counts.get(minute)
            series.append(Minute(minute * 60.0, bucket[1] if bucket else 0, bucket[2] if bucket else 0))
        return series

"""Usage figures: a bounded aggregator of usage records, reading a usage log, and the --stats summary."""

import json
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# The outcomes in the order the summary lists them, with their labels there.
OUTCOMES = (("delivered", "delivered"), ("final", "final answer passed on"), ("gave_up", "given up"),
            ("stopped", "proxy stopping"), ("client_gone", "client gone"))
TOKEN_KINDS = ("input", "cached", "output", "reasoning")
# Attempt kinds that are no failure of the upstream's.
NOT_FAILED = ("ok", "client_gone")
WORST_MINUTES = 5
# Minutes this close to the newest record are kept whatever their rank: records of different
# threads (or proxies) reach the log a little out of order, and such a minute may still grow.
RECENT_MINUTES = 60
# Distinct models, failure kinds or outcomes counted apart; more are counted as OTHER, so that no
# client naming a new model in every request can make the figures grow without end.
MAX_NAMES = 50
OTHER = "(other)"
# Durations go into 100 bins a decade (each 2.3% wide) from 1 ms to 100,000 s; a quantile is the
# mean of its bin's durations, so it is exact when that bin holds one value, and within 2.3% always.
BINS_PER_DECADE = 100
SHORTEST = 0.001
BINS = 8 * BINS_PER_DECADE
SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])\Z")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\Z")


def _bin(seconds: float) -> int:
    if seconds <= SHORTEST:
        return 0
    return min(BINS - 1, int(math.log10(seconds / SHORTEST) * BINS_PER_DECADE))


def _name(counts: Mapping[str, Any], name: str) -> str:
    return name if name in counts or len(counts) < MAX_NAMES else OTHER


def failure_name(attempt: Mapping[str, Any]) -> str:
    """How the figures name a failed attempt: its kind, or ``http_429`` for a failing status."""
    if attempt["kind"] == "status" and attempt.get("status") is not None:
        return "http_%d" % attempt["status"]
    return attempt["kind"]


class Stats:
    """The figures of any number of usage records in bounded memory: counters, a duration
    histogram, the per-minute counts of the minutes that may still rank among the worst."""

    def __init__(self) -> None:
        self.requests = 0
        self.outcomes: Dict[str, int] = {}
        self.retries = 0
        self.waited = 0.0
        self.failed: Dict[str, List[int]] = {}  # name: [failed attempts, of them in delivered requests]
        self.minutes: Dict[str, List[int]] = {}  # "YYYY-MM-DDTHH:MM": [requests, failed attempts]
        self.models: Dict[str, List[int]] = {}  # model sent: [requests, input, cached, output, reasoning]
        self.counts = [0] * BINS
        self.sums = [0.0] * BINS
        self.first: Optional[str] = None
        self.last: Optional[str] = None

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one usage record (the shape of ``usage.usage_record``)."""
        self.requests += 1
        outcome = _name(self.outcomes, record["outcome"])
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.retries += record["retries"]
        self.waited += record["waited"]
        failures = 0
        for attempt in record["attempts"]:
            if attempt["kind"] in NOT_FAILED:
                continue
            failures += 1
            name = _name(self.failed, failure_name(attempt))
            counts = self.failed.setdefault(name, [0, 0])
            counts[0] += 1
            counts[1] += record["outcome"] == "delivered"
        when = record["time"]
        minute = self.minutes.setdefault(when[:16], [0, 0])
        minute[0] += 1
        minute[1] += failures
        if len(self.minutes) > 2 * (RECENT_MINUTES + WORST_MINUTES):
            self._forget_minutes()
        self.first = when if self.first is None or when < self.first else self.first
        self.last = when if self.last is None or when > self.last else self.last
        self._add_tokens(record.get("model_sent") or "(none)", record.get("tokens"))
        index = _bin(record["seconds"])
        self.counts[index] += 1
        self.sums[index] += record["seconds"]

    def _add_tokens(self, model: str, tokens: Optional[Mapping[str, Optional[int]]]) -> None:
        counts = self.models.setdefault(_name(self.models, model), [0] * (1 + len(TOKEN_KINDS)))
        counts[0] += 1
        for index, kind in enumerate(TOKEN_KINDS, 1):
            counts[index] += (tokens or {}).get(kind) or 0

    def _forget_minutes(self) -> None:
        """Keep the worst minutes and the recent ones: no other minute can rank any more."""
        by_time = sorted(self.minutes)
        keep = set(by_time[-RECENT_MINUTES:]) | set(self._worst())
        self.minutes = {minute: counts for minute, counts in self.minutes.items() if minute in keep}

    def _worst(self) -> List[str]:
        failing = [minute for minute, counts in self.minutes.items() if counts[1]]
        return sorted(failing, key=lambda minute: (-self.minutes[minute][1], minute))[:WORST_MINUTES]

    def quantile(self, fraction: float) -> Optional[float]:
        """The nearest-rank quantile of the requests' total seconds (None without requests)."""
        total = sum(self.counts)
        if not total:
            return None
        rank = max(1, math.ceil(fraction * total - 1e-9))
        seen = 0
        for count, summed in zip(self.counts, self.sums):
            seen += count
            if seen >= rank:
                return summed / count
        return None  # not reached: the counts add up to total

    def figures(self) -> Dict[str, Any]:
        """Every figure, JSON-ready; a figure with no value is null."""
        outcomes = {name: 0 for name, _ in OUTCOMES}
        outcomes.update(self.outcomes)
        failed = sorted(self.failed.items(), key=lambda item: (-item[1][0], item[0]))
        median, p95 = self.quantile(0.5), self.quantile(0.95)
        return {
            "requests": self.requests,
            "outcomes": outcomes,
            "retries": self.retries,
            "failed_attempts": {name: {"failed": counts[0], "absorbed": counts[1]} for name, counts in failed},
            "worst_minutes": [{"minute": minute, "failed_attempts": self.minutes[minute][1],
                               "requests": self.minutes[minute][0]} for minute in self._worst()],
            "tokens_by_model": {model: dict(zip(("requests",) + TOKEN_KINDS, counts))
                                for model, counts in sorted(self.models.items())},
            "seconds": {"median": None if median is None else round(median, 3),
                        "p95": None if p95 is None else round(p95, 3)},
            "backoff_seconds": round(self.waited, 3),
            "first": self.first,
            "last": self.last,
        }


# -- reading a usage log -------------------------------------------------------


def _is_number(value: Any) -> bool:
    # json.loads reads 1e400 and Infinity as inf, which no bin or duration can hold
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def _is_attempt(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("kind"), str)
            and (value.get("status") is None or (isinstance(value["status"], int)
                                                 and not isinstance(value["status"], bool))))


def parse_record(line: bytes) -> Optional[Dict[str, Any]]:
    """A usage record from one line of a usage log, or None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not UTF-8, not JSON (a line cut short), or nested beyond reading
        return None
    if not isinstance(record, dict):
        return None
    tokens = record.get("tokens")
    valid = (isinstance(record.get("time"), str) and TIME.match(record["time"]) is not None
             and isinstance(record.get("outcome"), str)
             and isinstance(record.get("attempts"), list) and all(map(_is_attempt, record["attempts"]))
             and isinstance(record.get("retries"), int) and _is_number(record["retries"])
             and _is_number(record.get("seconds")) and _is_number(record.get("waited"))
             and (record.get("model_sent") is None or isinstance(record["model_sent"], str))
             and (tokens is None or (isinstance(tokens, dict) and all(
                 tokens.get(kind) is None or _is_number(tokens[kind]) for kind in TOKEN_KINDS))))
    return record if valid else None


def parse_since(text: str) -> float:
    """Seconds of a ``--since`` duration: ``90s``, ``30m``, ``24h``, ``7d``; ValueError if it is none."""
    match = SINCE.match(text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def read_log(lines: Iterable[bytes], since: Optional[str] = None) -> Tuple[Stats, int]:
    """The Stats of a usage log's records from ``since`` (an ISO time like the records'), and how many
    lines were skipped as not usage records. Blank lines are neither."""
    stats, skipped = Stats(), 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            skipped += 1
        elif since is None or record["time"] >= since:
            stats.add(record)
    return stats, skipped


# -- the summary ---------------------------------------------------------------


def duration(seconds: float) -> str:
    """``840 ms``, ``2.35 s``, ``12.3 s``, ``4 m 05 s``, ``2 h 10 m``."""
    if seconds < 1:
        return "%d ms" % round(seconds * 1000)
    if seconds < 10:
        return "%.2f s" % seconds
    if seconds < 60:
        return "%.1f s" % seconds
    if seconds < 3600:
        return "%d m %02d s" % divmod(int(round(seconds)), 60)
    return "%d h %02d m" % divmod(int(round(seconds / 60)), 60)


def _table(rows: Sequence[Sequence[Any]]) -> List[str]:
    """Rows aligned in columns: the first to the left, the others (figures) to the right."""
    cells = [[row[0]] + ["{:,}".format(cell) if isinstance(cell, int) else str(cell) for cell in row[1:]]
             for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    return ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
            .rstrip() for row in cells]


def _clock(when: Optional[str]) -> str:
    return (when or "")[:16].replace("T", " ")


def _span(first: Optional[str], last: Optional[str]) -> str:
    """``, 2026-11-30 07:02 to 09:14 UTC`` (the date once when it is one day), or nothing."""
    if first is None or last is None:
        return ""
    end = _clock(last)
    return ", %s to %s UTC" % (_clock(first), end[11:] if end[:10] == first[:10] else end)


def render(figures: Mapping[str, Any], source: str, skipped: int = 0) -> str:
    """The --stats summary of ``figures`` (``Stats.figures()``) read from ``source``."""
    count = figures["requests"]
    lines = ["%s: %s request%s%s" % (source, "{:,}".format(count), "" if count == 1 else "s",
                                     _span(figures["first"], figures["last"]))]
    if skipped:
        lines.append("skipped 1 line that is not a usage record" if skipped == 1 else
                     "skipped %d lines that are not usage records" % skipped)
    outcomes = dict(figures["outcomes"])
    rows: List[Sequence[Any]] = [("requests", figures["requests"])]
    rows += [("  " + label, outcomes.pop(name)) for name, label in OUTCOMES if outcomes.get(name)]
    rows += [("  " + name, count) for name, count in sorted(outcomes.items()) if count]
    seconds = figures["seconds"]
    rows += [("retries", figures["retries"]), ("time in backoff", duration(figures["backoff_seconds"]))]
    if seconds["median"] is not None:
        rows += [("total time, median", duration(seconds["median"])), ("total time, p95", duration(seconds["p95"]))]
    lines += [""] + _table(rows)
    if figures["failed_attempts"]:
        lines += [""] + _table([("failed attempts", "failed", "absorbed")] + [
            ("  " + name, counts["failed"], counts["absorbed"])
            for name, counts in figures["failed_attempts"].items()])
    if figures["worst_minutes"]:
        lines += [""] + _table([("worst minutes (UTC)", "failed attempts", "requests")] + [
            ("  " + _clock(minute["minute"]), minute["failed_attempts"], minute["requests"])
            for minute in figures["worst_minutes"]])
    if figures["tokens_by_model"]:
        lines += [""] + _table([("tokens by model", "requests") + TOKEN_KINDS] + [
            ("  " + model, counts["requests"]) + tuple(counts[kind] for kind in TOKEN_KINDS)
            for model, counts in figures["tokens_by_model"].items()])
    return "\n".join(lines) + "\n"

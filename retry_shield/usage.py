"""The usage record of an Exchange: one JSON-ready dict per request, never a prompt, an answer or a key."""

import time
from typing import Any, Dict, Optional, Tuple

from .routes import mask_secrets

# The token counts a record keeps, and where each protocol's usage object has them.
TOKEN_PATHS = {
    "input": (("input_tokens",), ("prompt_tokens",)),
    "output": (("output_tokens",), ("completion_tokens",)),
    "cached": (("input_tokens_details", "cached_tokens"), ("prompt_tokens_details", "cached_tokens")),
    "reasoning": (("output_tokens_details", "reasoning_tokens"), ("completion_tokens_details", "reasoning_tokens")),
}


def _count(usage: Dict[str, Any], path: tuple) -> Optional[int]:
    value: Any = usage
    for key in path:
        if not isinstance(value, dict):  # parsed JSON: a dict, never another Mapping (and ABC checks are slow)
            return None
        value = value.get(key)
    return value if type(value) is int else None  # not a bool


def token_counts(usage: Optional[Dict[str, Any]]) -> Optional[Dict[str, Optional[int]]]:
    """Input, output, cached and reasoning tokens of either protocol's usage object (None: no usage)."""
    if not isinstance(usage, dict):
        return None
    counts = {}
    for name, paths in TOKEN_PATHS.items():
        found = _count(usage, paths[0])
        counts[name] = _count(usage, paths[1]) if found is None else found
    return counts


def iso_time(wall: float) -> str:
    """UTC, to the millisecond: ``2026-11-30T07:43:43.123Z``."""
    seconds, millis = divmod(int(wall * 1000), 1000)
    moment = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (moment.tm_year, moment.tm_mon, moment.tm_mday, moment.tm_hour,
                                                   moment.tm_min, moment.tm_sec, millis)


# The fields a client chose freely: a key sent as a model name must not be kept as one.
CLIENT_TEXT = ("path", "model_asked", "model_sent")


def usage_record(exchange: Any, ended_at: float, secrets: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """What the usage log, /stats and the status page keep of one finished exchange.

    ``ended_at`` is the wall-clock time (``time.time()``) the answer was sent. Attempts keep
    their failure kind and status, not their detail: an upstream's message may quote the input.
    A key among ``secrets`` that a client sent as a model name or in its path is masked.
    ``served_by`` is the host that answered (None when none did), ``tried`` the hosts attempted in order.
    """
    record = {
        "time": iso_time(ended_at),
        "path": exchange.path,
        "client_api": exchange.client_protocol,
        "upstream_api": exchange.upstream_protocol,
        "model_asked": exchange.model_asked,
        "model_sent": exchange.model_sent,
        "client_stream": exchange.client_streamed,
        "status": exchange.status,
        "outcome": exchange.outcome,
        "attempts": [{"kind": attempt.kind, "status": attempt.status, "seconds": round(attempt.seconds, 3)}
                     for attempt in exchange.attempts],
        "retries": exchange.retries,
        "seconds": round(exchange.seconds, 3),
        "waited": round(exchange.waited, 3),
        "queued": round(exchange.queued, 3),  # waiting for a turn to send (pacing)
        "bytes": exchange.bytes,
        "tokens": token_counts(exchange.usage),
        "served_by": exchange.served_by or None,  # hosts only: never a path, a query or a key
        "tried": list(exchange.tried),
    }
    if secrets:
        for name in CLIENT_TEXT:
            record[name] = mask_secrets(record[name], secrets)
    return record

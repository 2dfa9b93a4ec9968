"""Retry decisions: hints, backoff, limits. Pure functions, no sockets."""

from email.utils import formatdate

import pytest

import proxy


@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360.0), ("1s", 1.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("2.5", 2.5), ("0", 0.0),
    ("soon", None), ("5x", None), ("", None),
])
def test_parse_duration(text, seconds):
    assert proxy.parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


NOW = 1_700_000_000.0


@pytest.mark.parametrize("headers, message, seconds", [
    ({"retry-after-ms": "1500"}, "", 1.5),
    ({"Retry-After-Ms": "20", "Retry-After": "9"}, "", 0.02),
    ({"Retry-After": "7"}, "", 7.0),
    ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, "", 30.0),
    ({"Retry-After": formatdate(NOW - 30, usegmt=True)}, "", 0.0),
    ({"x-ratelimit-reset-requests": "6m0s"}, "", 360.0),
    ({"x-ratelimit-reset-tokens": "12ms"}, "", 0.012),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "3s"}, "", 3.0),
    ({}, "Rate limit reached for gpt-4o. Please try again in 1.5s.", 1.5),
    ({}, "Please retry after 20 seconds.", 20.0),
    ({}, "try again in 250ms", 0.25),
    ({"Retry-After": "garbage"}, "", None),
    ({}, "something broke", None),
])
def test_retry_hint(headers, message, seconds):
    hint = proxy.retry_hint(headers, message, now=NOW)
    assert hint == (pytest.approx(seconds, abs=1.0 if "Retry-After" in headers else 1e-9)
                    if seconds is not None else None)


def failure(kind="status", retryable=True, headers=None, message=""):
    return proxy.UpstreamFailure(kind, "detail", headers=headers or {}, retryable=retryable, message=message)


def policy(max_retries=8, base=1.0, cap=30.0, total=600.0, rng=lambda: 1.0):
    return proxy.RetryPolicy(max_retries, base, cap, total, rng=rng)


def test_backoff_doubles_up_to_the_cap():
    waits = [policy(base=0.5, cap=5.0).next_wait(failure(), attempts, 0.0) for attempts in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_jitter_stays_within_a_quarter_below_the_ceiling():
    assert policy(base=2.0, rng=lambda: 0.0).next_wait(failure(), 1, 0.0) == 1.5
    assert policy(base=2.0, rng=lambda: 0.5).next_wait(failure(), 1, 0.0) == 1.75
    real = proxy.RetryPolicy(8, 2.0, 30.0, 600.0)
    assert all(1.5 <= real.next_wait(failure(), 1, 0.0) <= 2.0 for _ in range(200))


def test_hint_wins_over_backoff_even_above_the_cap():
    assert policy(cap=5.0).next_wait(failure(headers={"retry-after": "20"}), 1, 0.0) == 20.0
    assert policy(base=4.0).next_wait(failure(message="try again in 0.2s"), 3, 0.0) == pytest.approx(0.2)


def test_gives_up_after_max_retries():
    rule = policy(max_retries=2)
    assert rule.next_wait(failure(), 1, 0.0) is not None
    assert rule.next_wait(failure(), 2, 0.0) is not None
    assert rule.next_wait(failure(), 3, 0.0) is None
    assert policy(max_retries=0).next_wait(failure(), 1, 0.0) is None


def test_gives_up_when_the_wait_would_pass_total_timeout():
    rule = policy(base=4.0, total=10.0)
    assert rule.next_wait(failure(), 1, 5.0) == 4.0
    assert rule.next_wait(failure(), 1, 6.5) is None
    assert rule.next_wait(failure(headers={"retry-after": "60"}), 1, 0.0) is None


def test_non_retryable_failures_give_up_at_once():
    assert policy().next_wait(failure(kind="too_large", retryable=False), 1, 0.0) is None

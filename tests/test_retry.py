"""Retry decisions: hints, backoff, jitter, limits. Pure functions, no sockets."""

import random

import pytest

from retry_shield.config import load_config
from retry_shield.errors import UpstreamFailure
from retry_shield.retry import RetryPolicy, parse_duration, retry_hint


@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360.0), ("1s", 1.0), ("12ms", 0.012), ("1m30s", 90.0), ("0.5s", 0.5), ("1h2m3.5s", 3723.5),
    ("2h", 7200.0), (" 7s ", 7.0), ("2.5", 2.5), ("0", 0.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["soon", "5x", "", "1s2", "ms", "1 s", "s1"])
def test_parse_duration_unreadable(text):
    assert parse_duration(text) is None


NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "20", "Retry-After": "9"}, 0.02),  # the precise one wins
    ({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0),  # unreadable: the next one counts
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": " 2.5 "}, 2.5),
    ({"Retry-After": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),
    ({"Retry-After": "Tue, 14 Nov 2023 22:12:20 GMT"}, 0.0),  # already past: go now
    ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"X-RateLimit-Reset-Requests": "1s"}, 1.0),
    ({"x-ratelimit-reset-tokens": "12ms"}, 0.012),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "3s"}, 3.0),  # both must have reset
    ({"x-ratelimit-reset-requests": "20s", "x-ratelimit-reset-tokens": "3s"}, 20.0),
    # Only the limit that ran out: tokens are left, so their reset (a minute away) is not waited for.
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
      "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}, 1.0),
    ({"x-ratelimit-remaining-requests": "x", "x-ratelimit-reset-requests": "2s"}, 2.0),
    ({"Retry-After": "4", "x-ratelimit-reset-requests": "6m0s"}, 4.0),
])
def test_retry_hint_from_headers(headers, seconds):
    assert retry_hint(headers, "Please try again in 99s.", now=NOW) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("message, seconds", [
    ("Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, "
     "Requested 2000. Please try again in 1.5s. Visit https://platform.openai.com/account/rate-limits.", 1.5),
    ("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded "
     "call rate limit of your current OpenAI S0 pricing tier. Please retry after 20 seconds.", 20.0),
    ("Rate limit reached. Please try again in 250ms.", 0.25),
    ("Try again in 2 seconds", 2.0),
    ("Please try again in 6ms.", 0.006),
    # Go durations, as in the x-ratelimit-reset headers, appear in messages too (tokens per day):
    ("Rate limit reached for gpt-4o-mini on tokens per day (TPD): Limit 200000, Used 199000, Requested 2000. "
     "Please try again in 1m2.5s.", 62.5),
    ("Please try again in 22m27.84s.", 1347.84),
], ids=["1.5s", "Azure 20 seconds", "250ms", "2 seconds", "6ms", "1m2.5s", "22m27.84s"])
def test_retry_hint_from_the_message(message, seconds):
    assert retry_hint({}, message, now=NOW) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("headers, message", [
    ({}, ""), ({}, "The server had an error while processing your request."), ({}, "Please try again later."),
    ({"Retry-After": "soon"}, ""), ({"x-ratelimit-reset-requests": "whenever"}, ""), ({"Retry-After": ""}, ""),
])
def test_no_hint(headers, message):
    assert retry_hint(headers, message, now=NOW) is None


def failure(retryable=True, headers=None, message="", kind="status"):
    return UpstreamFailure(kind, "detail", status=503, headers=headers or {}, retryable=retryable,
                                 message=message)


def policy(max_retries=8, base=1.0, cap=30.0, total=600.0, rng=lambda: 1.0):
    return RetryPolicy(max_retries, base, cap, total, rng=rng)


def test_backoff_doubles_and_is_capped():
    rule = policy(max_retries=20, base=0.5, cap=5.0)  # rng 1.0: the ceiling itself
    assert [rule.next_wait(failure(), attempts, 0.0) for attempts in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert rule.next_wait(failure(), 20, 0.0) == 5.0  # no overflow far down the line


@pytest.mark.parametrize("draw, factor", [(0.0, 0.75), (0.5, 0.875), (0.999, 0.99975)])
def test_jitter_is_a_fraction_of_the_ceiling(draw, factor):
    rule = policy(base=2.0, cap=10.0, rng=lambda: draw)
    ceilings = [2.0, 4.0, 8.0, 10.0, 10.0]
    waits = [rule.next_wait(failure(), attempts, 0.0) for attempts in range(1, 6)]
    assert waits == pytest.approx([ceiling * factor for ceiling in ceilings])


def test_jitter_stays_between_three_quarters_and_the_ceiling():
    rule = policy(max_retries=10, base=1.0, cap=8.0, rng=random.Random(1234).random)
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (8, 8.0)]:
        waits = [rule.next_wait(failure(), attempts, 0.0) for _ in range(200)]
        assert all(0.75 * ceiling <= wait <= ceiling for wait in waits)
        assert max(waits) - min(waits) > 0.2 * ceiling  # jittered, not constant


def test_the_default_rng_jitters_too():
    rule = RetryPolicy(8, 2.0, 30.0, 600.0)
    waits = {rule.next_wait(failure(), 1, 0.0) for _ in range(50)}
    assert len(waits) > 1 and all(1.5 <= wait <= 2.0 for wait in waits)


def test_hint_wins_over_backoff_even_above_the_max_delay():
    rule = policy(base=4.0, cap=5.0, rng=lambda: 0.0)
    assert rule.next_wait(failure(headers={"retry-after": "20"}), 1, 0.0) == 20.0
    assert rule.next_wait(failure(headers={"retry-after-ms": "200"}), 3, 0.0) == pytest.approx(0.2)
    assert rule.next_wait(failure(message="Please try again in 7s."), 1, 0.0) == pytest.approx(7.0)
    assert rule.next_wait(failure(), 1, 0.0) == 3.0  # no hint: the backoff


def test_gives_up_after_max_retries():
    for max_retries in (0, 1, 3):
        rule = policy(max_retries=max_retries, base=0.01, cap=0.01)
        attempts = 1
        while rule.next_wait(failure(), attempts, 0.0) is not None:
            attempts += 1
            assert attempts < 50
        assert attempts == max_retries + 1


def test_gives_up_when_the_wait_would_pass_total_timeout():
    rule = policy(base=4.0, total=10.0)
    assert rule.next_wait(failure(), 1, 5.9) == 4.0
    assert rule.next_wait(failure(), 1, 6.1) is None
    hinted = failure(headers={"retry-after": "60"})
    assert policy(total=600.0).next_wait(hinted, 1, 500.0) == 60.0
    assert policy(total=600.0).next_wait(hinted, 1, 545.0) is None


def test_non_retryable_failures_give_up_at_once():
    rule = policy()
    assert rule.next_wait(failure(retryable=False), 1, 0.0) is None
    assert rule.next_wait(failure(retryable=False, headers={"retry-after": "1"}), 1, 0.0) is None
    assert rule.next_wait(failure(retryable=True), 1, 0.0) is not None


def test_policy_from_config():
    config = load_config([], {"AZURE_ENDPOINT": "http://127.0.0.1:9/v1", "MAX_RETRIES": "2",
                                    "RETRY_BASE_DELAY": "0.25", "RETRY_MAX_DELAY": "0.5", "TOTAL_TIMEOUT": "3"})
    rule = RetryPolicy.from_config(config)
    assert (rule.max_retries, rule.base_delay, rule.max_delay, rule.total_timeout) == (2, 0.25, 0.5, 3.0)
    assert rule.next_wait(failure(), 3, 0.0) is None
    assert 0.375 <= rule.next_wait(failure(), 2, 0.0) <= 0.5


def test_a_name_that_does_not_resolve_is_retried_at_most_twice():
    """A DNS failure is almost always configuration: 3 attempts at most, whatever MAX_RETRIES says."""
    rule = policy(max_retries=8, base=0.01, cap=0.01)
    dns = failure(kind="dns")
    assert [rule.next_wait(dns, attempts, 0.0) is not None for attempts in (1, 2, 3)] == [True, True, False]
    assert rule.max_attempts_for(dns) == 3
    assert rule.max_attempts_for(failure()) == 9  # every other kind: MAX_RETRIES as set
    assert rule.next_wait(failure(), 3, 0.0) is not None
    fewer = policy(max_retries=1, base=0.01, cap=0.01)  # a lower MAX_RETRIES still wins
    assert fewer.next_wait(dns, 2, 0.0) is None and fewer.max_attempts_for(dns) == 2
    # The cap counts every attempt of the request: once its host stops resolving after
    # earlier failures of another kind, it gives up as soon as three attempts are made.
    assert rule.next_wait(dns, 4, 0.0) is None


def test_a_reset_on_a_kept_alive_connection_is_retried_at_once_within_the_limits():
    rule = policy(base=4.0, max_retries=2, total=10.0)
    reused = UpstreamFailure("reset", "connection lost before the answer on a kept-alive connection", reused=True)
    assert rule.next_wait(reused, 1, 0.0) == 0.0
    assert rule.next_wait(UpstreamFailure("reset", "connection lost before the answer"), 1, 0.0) == 4.0
    assert rule.next_wait(UpstreamFailure("timeout", "no answer", reused=True), 1, 0.0) == 4.0  # only a reset
    assert rule.next_wait(reused, 3, 0.0) is None  # still an attempt: MAX_RETRIES counts it
    assert rule.next_wait(reused, 1, 10.0) is None  # and TOTAL_TIMEOUT bounds it

"""The retry loop without sockets: scripted attempts, a fake clock, and the Exchange it returns."""

import pytest

from retry_shield.errors import ClientGone, UpstreamFailure
from retry_shield.prepare import Outbound
from retry_shield.retry import RetryPolicy
from retry_shield.shield import (CLIENT_GONE, DELIVERED, FINAL, GAVE_UP, GO, GONE, STOPPED, STOPPING, SUMMARY,
                                 Exchange, run, summary)
from retry_shield.sse import StreamVerdict
from retry_shield.upstream import UpstreamAnswer

OUTBOUND = Outbound(operation="/responses", client_protocol="responses", upstream_protocol="responses",
                    url="http://127.0.0.1:9/v1/responses?api-version=x&key=secret", body=b"{}", headers={},
                    model_asked="gpt-asked", model_sent="gpt-sent", wants_stream=True)
USAGE = {"input_tokens": 3, "output_tokens": 4}


class Clock:
    """Time that moves only when the script says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def good(verdict=StreamVerdict.COMPLETE, status=200):
    return UpstreamAnswer(status, [("Content-Type", "text/event-stream")], b"data: ok\n\n",
                          StreamVerdict(verdict, usage=USAGE))


def failure(kind="status", status=503, retryable=True, headers=None, body=b'{"error":{}}'):
    return UpstreamFailure(kind, "%s happened" % kind, status=status, headers=headers, body=body,
                           retryable=retryable)


class Script:
    """make_attempt and wait for run(): each attempt takes ``attempt_seconds`` and does what the plan says."""

    def __init__(self, clock, plan, waits=(), attempt_seconds=1.0):
        self.clock, self.plan, self.waits = clock, list(plan), list(waits)
        self.attempt_seconds = attempt_seconds
        self.numbers, self.asked_waits = [], []

    def attempt(self, number):
        self.numbers.append(number)
        self.clock.now += self.attempt_seconds
        step = self.plan.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def wait(self, seconds):
        self.asked_waits.append(seconds)
        self.clock.now += seconds
        return self.waits.pop(0) if self.waits else GO


def shield(plan, waits=(), max_retries=8, total=600.0, stopping=lambda: False, attempt_seconds=1.0):
    clock = Clock()
    script = Script(clock, plan, waits, attempt_seconds)
    policy = RetryPolicy(max_retries, 1.0, 30.0, total, rng=lambda: 1.0)  # no jitter: waits 1, 2, 4...
    exchange = run(Exchange.of("POST", "/v1/responses", OUTBOUND, clock.now), script.attempt, script.wait, policy,
                   stopping, clock)
    return exchange, script


def test_the_good_answer_after_failures_is_delivered_with_every_attempt_recorded():
    answer = good()
    exchange, script = shield([failure(), failure("cut", status=None), answer])
    assert exchange.outcome == DELIVERED and exchange.answer is answer and exchange.failure is None
    assert script.numbers == [1, 2, 3] and script.asked_waits == [1.0, 2.0]
    assert [(a.number, a.kind, a.status) for a in exchange.attempts] == [(1, "status", 503), (2, "cut", None),
                                                                         (3, "ok", 200)]
    assert exchange.retries == 2 and exchange.waited == 3.0
    assert exchange.seconds == 6.0  # three attempts of 1 s and waits of 1 + 2 s
    assert exchange.usage == USAGE and exchange.verdict == "complete" and exchange.bytes == len(answer.body)
    assert exchange.status == 200


def test_the_exchange_names_both_protocols_the_models_and_a_redacted_endpoint():
    exchange, _ = shield([good()])
    assert (exchange.client_protocol, exchange.upstream_protocol) == ("responses", "responses")
    assert (exchange.model_asked, exchange.model_sent) == ("gpt-asked", "gpt-sent")
    assert exchange.endpoint == "http://127.0.0.1:9/v1/responses" and "secret" not in repr(exchange)
    assert exchange.client_streamed is True and len(exchange.attempts) == 1 and exchange.retries == 0


def test_gives_up_after_max_retries_with_the_last_failure():
    last = failure(status=502)
    exchange, script = shield([failure(), failure(), last], max_retries=2)
    assert exchange.outcome == GAVE_UP and exchange.failure is last and exchange.answer is None
    assert script.numbers == [1, 2, 3] and exchange.retries == 2
    assert exchange.bytes == len(last.body)  # the upstream's own answer is what the client gets


def test_a_failure_no_retry_can_fix_ends_at_once():
    exchange, script = shield([failure("tls", status=None, retryable=False, body=b"")])
    assert exchange.outcome == GAVE_UP and script.numbers == [1] and script.asked_waits == []
    assert exchange.bytes == 0 and exchange.attempts[0].kind == "tls"


@pytest.mark.parametrize("answer", [good(status=400), good(verdict=StreamVerdict.FAILED)], ids=["4xx", "final error"])
def test_a_final_answer_is_passed_on_without_retrying(answer):
    exchange, script = shield([answer, good()])
    assert exchange.outcome == FINAL and exchange.answer is answer and script.numbers == [1]


def test_an_incomplete_stream_is_delivered():
    exchange, _ = shield([good(verdict=StreamVerdict.INCOMPLETE)])
    assert exchange.outcome == DELIVERED and exchange.verdict == "incomplete"


def test_total_timeout_stops_retrying_before_a_wait_would_pass_it():
    # 1 s attempts, waits 1, 2, 4: after attempt 3 the clock says 6 s; 6 + 4 >= 9.5 gives up
    exchange, script = shield([failure()] * 9, total=9.5)
    assert exchange.outcome == GAVE_UP and script.numbers == [1, 2, 3] and script.asked_waits == [1.0, 2.0]


def test_an_upstream_hint_sets_the_wait():
    hinted = failure(status=429, headers={"retry-after": "7"})
    _, script = shield([hinted, good()])
    assert script.asked_waits == [7.0]


def test_client_gone_during_an_attempt():
    exchange, script = shield([failure(), ClientGone()])
    assert exchange.outcome == CLIENT_GONE and exchange.status == 499
    assert exchange.answer is None and exchange.failure is None
    assert [a.kind for a in exchange.attempts] == ["status", "client_gone"]


def test_client_gone_during_a_wait():
    exchange, script = shield([failure(), good()], waits=[GONE])
    assert exchange.outcome == CLIENT_GONE and exchange.status == 499 and script.numbers == [1]


def test_a_stopping_server_ends_the_wait_with_the_last_failure():
    last = failure()
    exchange, script = shield([last, good()], waits=[STOPPING])
    assert exchange.outcome == STOPPED and exchange.failure is last and script.numbers == [1]
    assert exchange.status == 503 and summary(exchange)[-1] == " (proxy stopping)"


def test_a_stopping_server_begins_no_new_wait():
    stops = iter([False, True])  # the server begins stopping during attempt 1
    exchange, script = shield([failure(), good()], stopping=lambda: next(stops))
    assert exchange.outcome == STOPPED and script.asked_waits == [] and script.numbers == [1]
    assert [a.kind for a in exchange.attempts] == ["status"]


def test_a_stopping_server_begins_no_attempt():
    exchange, script = shield([good()], stopping=lambda: True)
    assert exchange.outcome == STOPPED and script.numbers == [] and exchange.attempts == ()
    assert exchange.failure is None and exchange.status == 503


def test_a_final_failure_while_stopping_is_given_up_as_usual():
    final = failure("tls", status=None, retryable=False, body=b"")
    stops = iter([False, True])
    exchange, _ = shield([final], stopping=lambda: next(stops))
    assert exchange.outcome == GAVE_UP and exchange.failure is final


def test_an_attempt_cut_short_by_the_stop_is_counted():
    stops = iter([False, True])
    cut_short = UpstreamFailure("stopping", "cut short: the proxy is stopping")
    exchange, _ = shield([cut_short], stopping=lambda: next(stops))
    assert exchange.outcome == STOPPED and summary(exchange)[3] == 1 and exchange.attempts[0].kind == "stopping"


def test_summary_line_from_the_exchange():
    exchange, _ = shield([failure(), good()])
    line = SUMMARY % summary(exchange)
    assert line == ("POST /v1/responses 200 attempts=2 bytes=10 time=3.00s model=gpt-sent api=responses->responses "
                    "tokens=3/4 (complete)")
    gave_up, _ = shield([failure("cut", status=None, retryable=False, body=b"")])
    assert summary(gave_up)[-1] == " (gave up)"
    gone, _ = shield([ClientGone()])
    assert summary(gone)[2] == 499 and summary(gone)[-1] == " (client gone)"


class ScriptedUpstream:
    """Upstream.attempt without sockets: each call does what the plan says and records ``fresh``."""

    def __init__(self, plan):
        self.plan, self.fresh = list(plan), []

    def attempt(self, method, url, body, headers, protocol, deadline, still_wanted, fresh=False):
        self.fresh.append(fresh)
        step = self.plan.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def lost(reused):
    return UpstreamFailure("reset", "connection lost before the answer", reused=reused)


def test_a_reset_on_a_kept_alive_connection_is_an_attempt_retried_at_once_on_a_new_connection():
    """The request went out on a kept-alive connection and was lost: the upstream may have it, so it
    counts; the next attempt follows at once on a new connection, and a reset there waits the backoff."""
    from retry_shield.quirks import Quirks
    from retry_shield.shield import upstream_attempts
    clock = Clock()
    upstream = ScriptedUpstream([lost(reused=True), lost(reused=False), good()])
    make_attempt = upstream_attempts(upstream, OUTBOUND, clock.now + 600, lambda: True, 9, Quirks())
    waits = []

    def wait(seconds):
        waits.append(seconds)
        return GO

    policy = RetryPolicy(8, 1.0, 30.0, 600.0, rng=lambda: 1.0)
    exchange = run(Exchange.of("POST", "/v1/responses", OUTBOUND, clock.now), make_attempt, wait, policy,
                   lambda: False, clock)
    assert exchange.outcome == DELIVERED and [a.kind for a in exchange.attempts] == ["reset", "reset", "ok"]
    assert summary(exchange)[3] == 3 and exchange.retries == 2
    assert waits == [0.0, 2.0]  # at once, then the backoff of a second retry
    assert upstream.fresh == [False, True, False]  # only the attempt after the kept-alive loss must be new

"""Pacing: RPM_LIMIT's token bucket and the upstream's x-ratelimit holds, as data, in run(), and through the proxy."""

import json
import socket
import threading
import time

import pytest

from retry_shield.endpoints import Endpoint
from retry_shield.errors import UpstreamFailure
from retry_shield.pacing import Line, Pacer, Pacers, hold_from_headers
from retry_shield.replies import reply_for
from retry_shield.retry import RetryPolicy
from retry_shield.shield import (CLIENT_GONE, DELIVERED, GAVE_UP, GO, GONE, STOPPED, STOPPING, SUMMARY, TIMEOUT,
                                 Exchange, run, summary)
from tests.fake_upstream import good, status
from tests.helpers import STREAMED, post, request
from tests.test_engine import OUTBOUND, Clock
from tests.test_engine import good as good_answer

# ---------------------------------------------------------------------------
# The line of one endpoint, as data: times go in, release times and order come out
# ---------------------------------------------------------------------------


def releases(line, names, now):
    """Let the line empty itself, each first ticket at its earliest time: [(name, time)] in release order."""
    out = []
    while line.waiting:
        first = line.waiting[0]
        for later in line.waiting[1:]:
            assert not line.go(later, line.earliest(later, now)), "a ticket went before the first"
        now = line.earliest(first, now)
        assert line.go(first, now)
        out.append((names[first], round(now, 6)))
    return out


def joined(line, *arrivals):
    """Tickets for requests that reached the proxy at ``arrivals`` (in that order), with their names."""
    names = {}
    for name, arrived in arrivals:
        names[line.join(arrived)] = name
    return names


def test_the_bucket_holds_one_seconds_worth_and_refills_at_rpm_over_60():
    line = Line(120, now=0.0)  # 2 a second: 2 at once, then one every half second
    names = joined(line, *[(name, 0.0) for name in "abcde"])
    assert releases(line, names, 0.0) == [("a", 0.0), ("b", 0.0), ("c", 0.5), ("d", 1.0), ("e", 1.5)]


def test_a_slow_rate_still_holds_one_whole_request():
    line = Line(30, now=0.0)  # one every 2 s; a bucket of half a request would never let one go
    assert line.capacity == 1.0
    names = joined(line, ("a", 0.0), ("b", 0.0), ("c", 0.0))
    assert releases(line, names, 0.0) == [("a", 0.0), ("b", 2.0), ("c", 4.0)]


def test_an_idle_bucket_fills_up_to_one_seconds_worth_only():
    line = Line(180, now=0.0)  # 3 a second
    names = joined(line, *[(str(n), 0.0) for n in range(3)])
    assert [time for _, time in releases(line, names, 0.0)] == [0.0, 0.0, 0.0]
    names = joined(line, *[(str(n), 100.0) for n in range(5)])  # 100 s idle: still 3 at once, not 300
    assert [time for _, time in releases(line, names, 100.0)] == [100.0, 100.0, 100.0, round(100 + 1 / 3, 6),
                                                                   round(100 + 2 / 3, 6)]


def test_requests_go_in_the_order_they_reached_the_proxy():
    line = Line(60, now=0.0)
    names = joined(line, ("first", 1.0), ("third", 3.0), ("second", 2.0))  # a retry joins with its arrival time
    assert releases(line, names, 3.0) == [("first", 3.0), ("second", 4.0), ("third", 5.0)]


def test_a_request_that_leaves_uses_no_turn_and_the_next_moves_up():
    line = Line(60, now=0.0)
    first, second, third = (line.join(0.0) for _ in range(3))
    assert line.go(first, 0.0)
    assert line.earliest(third, 0.1) == 2.0
    assert line.leave(second) is third  # it was first: the next must be woken
    assert line.earliest(third, 0.1) == 1.0
    assert line.leave(second) is None
    assert not line.go(third, 0.9) and line.go(third, 1.0)


def test_without_a_rate_nothing_waits_unless_the_upstream_holds():
    line = Line(0, now=0.0)
    names = joined(line, *[(str(n), 0.0) for n in range(20)])
    assert {time for _, time in releases(line, names, 0.0)} == {0.0}


def test_a_hold_keeps_every_request_until_its_end_then_they_go_in_order():
    line = Line(0, now=0.0)
    assert line.hold(12.0, now=1.0) is True  # a hold begins
    assert line.hold(5.0, now=2.0) is False  # still on: not a new one, and it does not shorten it
    names = joined(line, ("a", 2.0), ("b", 3.0), ("c", 2.5))
    assert releases(line, names, 3.0) == [("a", 13.0), ("c", 13.0), ("b", 13.0)]
    assert line.hold(1.0, now=14.0) is True  # the last one ended: this is a new hold


def test_held_requests_go_through_the_bucket_at_the_end_of_the_hold():
    line = Line(120, now=0.0)
    names = joined(line, *[(name, 0.0) for name in "ab"])
    assert [time for _, time in releases(line, names, 0.0)] == [0.0, 0.0]  # the bucket is empty now
    line.hold(10.0, now=0.0)
    names = joined(line, *[(name, 1.0) for name in "cdef"])
    # it refilled during the hold, to one second's worth: two at its end, then every half second
    assert releases(line, names, 1.0) == [("c", 10.0), ("d", 10.0), ("e", 10.5), ("f", 11.0)]


@pytest.mark.parametrize("headers, hold", [
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12s"}, ("requests", 12.0)),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, ("tokens", 360.0)),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, ("requests", 0.02)),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5"}, ("requests", 1.5)),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m2s"}, ("tokens", 62.0)),
    ({"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "1s",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "3s"}, ("tokens", 3.0)),
    ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "12s"}, None),
    ({"x-ratelimit-remaining-requests": "0"}, None),  # Azure sends no reset: nothing says how long
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, None),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"}, None),  # already reset
    ({"x-ratelimit-remaining-requests": "none", "x-ratelimit-reset-requests": "1s"}, None),
    ({"retry-after": "5"}, None),
])
def test_a_hold_is_read_from_the_remaining_and_reset_headers(headers, hold):
    assert hold_from_headers(headers) == hold


# ---------------------------------------------------------------------------
# The blocking wait for a turn: real threads, real events
# ---------------------------------------------------------------------------


def wait_until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def turn_in_thread(pacer, arrived=0.0, deadline=None, still_wanted=lambda: True, stopping=None):
    ended = {}
    deadline = time.monotonic() + 600 if deadline is None else deadline
    thread = threading.Thread(target=lambda: ended.update(turn=pacer.wait_turn(
        arrived, deadline, still_wanted, stopping or threading.Event())))
    thread.start()
    return thread, ended


def test_the_first_request_goes_at_once_and_queues_nothing():
    pacer = Pacer("host", 60)
    assert pacer.wait_turn(0.0, time.monotonic() + 60, lambda: True, threading.Event()) == (GO, 0.0)
    assert pacer.queued == 0


def test_a_waiting_request_ends_at_once_when_the_proxy_stops_and_leaves_the_line():
    pacer, stopping = Pacer("host", 1), threading.Event()
    assert pacer.wait_turn(0.0, time.monotonic() + 600, lambda: True, stopping)[0] == GO
    thread, ended = turn_in_thread(pacer, stopping=stopping)
    wait_until(lambda: pacer.queued == 1, "the second request did not queue")
    stopping.set()
    pacer.wake_all()
    thread.join(5)
    assert ended["turn"][0] == STOPPING and ended["turn"][1] > 0 and pacer.queued == 0


def test_a_client_that_leaves_while_waiting_ends_gone_and_the_next_moves_up():
    pacer = Pacer("host", 1)  # one a minute: the second waits 60 s, the third 120 s
    assert pacer.wait_turn(0.0, time.monotonic() + 600, lambda: True, threading.Event())[0] == GO
    wanted, still = threading.Event(), threading.Event()
    wanted.set()
    still.set()
    leaving, left = turn_in_thread(pacer, arrived=1.0, still_wanted=wanted.is_set)
    staying, stayed = turn_in_thread(pacer, arrived=2.0, still_wanted=still.is_set)
    wait_until(lambda: pacer.queued == 2, "the requests did not queue")
    third = pacer.line.waiting[1]
    assert pacer.line.earliest(third, time.monotonic()) > time.monotonic() + 100
    wanted.clear()
    leaving.join(5)
    assert left["turn"][0] == GONE and pacer.queued == 1
    assert pacer.line.earliest(third, time.monotonic()) < time.monotonic() + 60  # it took the leaver's place
    still.clear()
    staying.join(5)
    assert stayed["turn"][0] == GONE and pacer.queued == 0


def test_a_turn_that_cannot_come_before_the_deadline_times_out_at_once():
    pacer = Pacer("host", 1)
    assert pacer.wait_turn(0.0, time.monotonic() + 600, lambda: True, threading.Event())[0] == GO
    outcome, queued = pacer.wait_turn(1.0, time.monotonic() + 20, lambda: True, threading.Event())
    assert (outcome, queued) == (TIMEOUT, pytest.approx(0.0, abs=5.0)) and pacer.queued == 0  # not 20 s, nor 60


def test_held_requests_all_go_when_the_hold_ends():
    clock = Clock()  # still until the test moves it: the hold cannot end before all six wait
    pacer = Pacer("host", 0, clock=clock)
    pacer.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"})
    waiting = [turn_in_thread(pacer, arrived=float(n), deadline=clock.now + 600) for n in range(6)]
    wait_until(lambda: pacer.queued == 6, "the held requests did not all queue")
    assert not any(ended for _, ended in waiting)
    clock.now += 0.3
    for thread, _ in waiting:
        thread.join(10)
    assert [ended["turn"] for _, ended in waiting] == [(GO, pytest.approx(0.3))] * 6 and pacer.queued == 0


def test_each_endpoint_has_its_own_pacer_for_the_servers_life():
    pacers = Pacers()
    primary = pacers.pacer_for(Endpoint(0, "https://a.test/openai/v1?api-key=secret", rpm_limit=60))
    assert pacers.pacer_for(Endpoint(0, "https://a.test/openai/v1?api-key=secret", rpm_limit=60)) is primary
    other = pacers.pacer_for(Endpoint(1, "http://127.0.0.1:8080/v1"))
    assert other is not primary and (primary.name, other.name) == ("a.test", "127.0.0.1:8080")
    assert (primary.rpm, other.rpm) == (60, 0)


def test_a_fallback_on_the_primary_s_url_has_a_pacer_of_its_own():
    # Another deployment or key on the same Azure resource: the same URL, its own quota.
    pacers = Pacers()
    primary = pacers.pacer_for(Endpoint(0, "https://a.test/openai/v1", model="east", rpm_limit=60))
    fallback = pacers.pacer_for(Endpoint(1, "https://a.test/openai/v1", model="west", rpm_limit=6))
    assert fallback is not primary and (primary.rpm, fallback.rpm) == (60, 6)


# ---------------------------------------------------------------------------
# run() with a scripted pace: what a turn that does not come ends in
# ---------------------------------------------------------------------------


class Paced:
    """make_attempt, wait and pace for run(): pace() answers from ``turns`` and moves the clock."""

    def __init__(self, clock, turns, plan):
        self.clock, self.turns, self.plan = clock, list(turns), list(plan)
        self.attempts = 0

    def pace(self, endpoint):
        assert endpoint == 0  # no fallbacks: every turn is the primary's
        turn, seconds = self.turns.pop(0)
        self.clock.now += seconds
        return turn, seconds

    def attempt(self, number):
        self.attempts += 1
        self.clock.now += 1.0
        step = self.plan.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def wait(self, seconds):
        self.clock.now += seconds
        return GO


def paced_run(turns, plan=()):
    clock = Clock()
    script = Paced(clock, turns, plan)
    policy = RetryPolicy(8, 1.0, 30.0, 600.0, rng=lambda: 1.0)
    exchange = run(Exchange.of("POST", "/v1/responses", OUTBOUND, clock.now), script.attempt, script.wait, policy,
                   lambda: False, clock, pace=script.pace)
    return exchange, script


def test_time_queued_is_recorded_and_named_in_the_summary_line():
    exchange, script = paced_run([(GO, 2.5), (GO, 0.0)], [UpstreamFailure("status", "HTTP 429", status=429),
                                                          good_answer()])
    assert exchange.outcome == DELIVERED and script.attempts == 2
    assert exchange.queued == 2.5 and exchange.seconds == 2.5 + 1.0 + 1.0 + 1.0
    assert " time=5.50s queued=2.50s model=gpt-sent " in SUMMARY % summary(exchange)


def test_a_summary_line_without_queueing_is_unchanged():
    exchange, _ = paced_run([(GO, 0.0)], [good_answer()])
    assert exchange.queued == 0.0 and "queued" not in SUMMARY % summary(exchange)


def test_a_client_gone_while_queued_ends_with_nothing_sent():
    exchange, script = paced_run([(GONE, 4.0)])
    assert exchange.outcome == CLIENT_GONE and exchange.status == 499 and script.attempts == 0
    assert exchange.attempts == () and exchange.queued == 4.0
    assert "attempts=0" in SUMMARY % summary(exchange) and "(client gone)" in SUMMARY % summary(exchange)


def test_a_stop_while_queued_is_answered_proxy_stopping_with_nothing_sent():
    exchange, script = paced_run([(STOPPING, 1.0)])
    assert exchange.outcome == STOPPED and script.attempts == 0
    reply = reply_for(exchange, "", 0)
    assert reply.status == 503 and "not sent upstream" in json.loads(reply.body)["error"]["message"]


def test_a_first_turn_past_the_total_timeout_is_a_504_that_blames_the_pacing():
    exchange, script = paced_run([(TIMEOUT, 0.0)])
    assert exchange.outcome == GAVE_UP and script.attempts == 0 and exchange.failure.kind == "paced"
    reply = reply_for(exchange, "", 0)
    error = json.loads(reply.body)["error"]
    assert reply.status == 504 and error["code"] == "paced" and error["attempts"] == 0
    assert error["message"].startswith("nothing was sent upstream: the request's turn (RPM_LIMIT, or the upstream's "
                                       "x-ratelimit headers) could not come within TOTAL_TIMEOUT (600 s)")


def test_a_retry_whose_turn_cannot_come_gives_up_with_the_last_failure():
    limited = UpstreamFailure("status", "HTTP 429", status=429, headers={"content-type": "application/json"},
                              body=b'{"error": {"code": "429"}}')
    exchange, script = paced_run([(GO, 0.0), (TIMEOUT, 3.0)], [limited])
    assert exchange.outcome == GAVE_UP and exchange.failure is limited and script.attempts == 1
    assert exchange.bytes == len(limited.body) and exchange.queued == 3.0
    assert reply_for(exchange, "", 0).status == 429


# ---------------------------------------------------------------------------
# Through the real proxy
# ---------------------------------------------------------------------------


def health(port):
    return json.loads(request(port, "GET", "/health", body=None)[2])


def numbered(number):
    return {"model": "m", "input": "hi", "stream": True, "n": str(number)}


def test_rpm_limit_paces_requests_in_arrival_order(upstream, make_proxy):
    upstream.plan(good(echo="n"))
    shield = make_proxy(upstream, RPM_LIMIT="60")  # one at once, then one a second
    answers = {}
    threads = []
    for number in range(1, 5):
        thread = threading.Thread(target=lambda n=number: answers.update({n: post(shield.port, body=numbered(n))}))
        thread.start()
        threads.append(thread)
        # Each in turn reaches the proxy before the next is sent: it waits in the line or has gone upstream
        # (the attempts read first: one that moves between the two readings is not counted twice).
        wait_until(lambda n=number: upstream.attempts + health(shield.port)["queued"] == n,
                   "request %d did not reach the proxy" % number)
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == [1, 2, 3, 4] and {answer[0] for answer in answers.values()} == {200}
    arrivals = [(int(seen.json["n"]), seen.time) for seen in upstream.requests]
    assert [number for number, _ in arrivals] == [1, 2, 3, 4]
    first = arrivals[0][1]
    for index, (_, at) in enumerate(arrivals[1:], start=1):  # a second apart (unpaced: all within milliseconds)
        assert at - first >= index - 0.5, arrivals  # less the first attempt's own way there, if a slow machine


def test_retries_pass_through_the_rpm_limit_too(upstream, make_proxy, caplog):
    caplog.set_level("INFO", logger="retry_shield")
    upstream.plan(status(500), good())
    shield = make_proxy(upstream, RPM_LIMIT="60")  # the retry's backoff is 0.01 s, its turn 1 s later
    assert post(shield.port)[0] == 200
    first, second = (seen.time for seen in upstream.requests)
    assert second - first >= 0.5  # its turn a second after the first's (its backoff alone: 0.01 s)
    line = [record.getMessage() for record in caplog.records if " attempts=2 " in record.getMessage()][0]
    assert " queued=" in line


class StillThenRunning:
    """Time for the upstream's rate limit: still until run() is called, then running on from the last time read."""

    def __init__(self):
        self.now, self.read_at, self.running = 100.0, time.monotonic(), False

    def __call__(self):
        if self.running:
            return self.now + time.monotonic() - self.read_at
        self.read_at = time.monotonic()
        return self.now

    def run(self):
        self.running = True


def test_an_upstream_that_says_none_remain_holds_the_next_requests_until_its_reset(upstream, make_proxy, caplog):
    caplog.set_level("INFO", logger="retry_shield")
    # However slow the first three requests, their window has all its 1.5 s left at the third; the rest of it
    # passes in real time from that attempt on, so it closes before the proxy's hold (begun on its answer) ends.
    upstream.clock = clock = StillThenRunning()
    upstream.limit(3, 1.5, reset_headers=True)  # as OpenAI: remaining and reset on every answer
    shield = make_proxy(upstream)
    for _ in range(3):
        assert post(shield.port)[0] == 200  # the third answer says 0 remain
    clock.run()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post(shield.port))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [answer[0] for answer in answers] == [200] * 3
    assert upstream.limited == 0 and upstream.attempts == 6  # held until the reset, not sent into 429s
    assert min(seen.time for seen in upstream.requests[3:]) - upstream.requests[2].time >= 1.5
    holds = [record.getMessage() for record in caplog.records if "holding new requests" in record.getMessage()]
    assert holds[0] == "upstream 127.0.0.1:%d says 0 requests remain; holding new requests for 1.5 s" % upstream.port


def test_a_hold_longer_than_the_total_timeout_is_answered_at_once_with_nothing_sent(upstream, make_proxy):
    upstream.plan(good(headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}))
    shield = make_proxy(upstream, TOTAL_TIMEOUT="60")
    assert post(shield.port)[0] == 200
    code, _, body = post(shield.port)
    error = json.loads(body)["error"]
    assert code == 504 and error["code"] == "paced" and "TOTAL_TIMEOUT (60 s)" in error["message"]
    assert upstream.attempts == 1


def test_a_client_that_leaves_the_queue_is_gone_at_once_and_nothing_is_sent_for_it(upstream, make_proxy, caplog):
    caplog.set_level("INFO", logger="retry_shield")
    shield = make_proxy(upstream, RPM_LIMIT="1", TOTAL_TIMEOUT="600")  # the second request's turn: in 60 s
    assert post(shield.port)[0] == 200
    sock = socket.create_connection(("127.0.0.1", shield.port))
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(STREAMED), STREAMED))
    wait_until(lambda: health(shield.port)["queued"] == 1, "the second request did not queue")
    sock.close()
    wait_until(lambda: health(shield.port)["requests"] == 2, "the request that left stayed in the queue")
    assert health(shield.port)["queued"] == 0 and upstream.attempts == 1
    line = [record.getMessage() for record in caplog.records if "(client gone)" in record.getMessage()][0]
    assert " 499 attempts=0 " in line and " queued=" in line


def test_a_queued_request_gets_proxy_stopping_with_nothing_sent_when_the_proxy_stops(upstream, make_proxy):
    shield = make_proxy(upstream, RPM_LIMIT="1", TOTAL_TIMEOUT="600")
    assert post(shield.port)[0] == 200
    result = {}
    client = threading.Thread(target=lambda: result.update(answer=post(shield.port)))
    client.start()
    wait_until(lambda: health(shield.port)["queued"] == 1, "the second request did not queue")
    shield.server.drain(grace=5.0)
    client.join(10)
    code, headers, body = result["answer"]
    error = json.loads(body)["error"]
    assert code == 503 and error["code"] == "proxy_stopping" and "not sent upstream" in error["message"]
    assert upstream.attempts == 1


# ---------------------------------------------------------------------------
# Measured: a burst against a quota of 10 requests per 2 seconds
# ---------------------------------------------------------------------------

BURST = 50
PACED_RPM = 270  # the quota is 300 a minute: a little below it, as README advises


def burst(port, count):
    answers = []
    lock = threading.Lock()

    def one():
        answer = post(port, timeout=60)
        with lock:
            answers.append(answer[0])
    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return answers


def test_a_burst_of_50_against_10_per_2_seconds_meets_5_times_fewer_429s_with_pacing(make_proxy):
    from tests.fake_upstream import FakeUpstream
    results = {}
    with FakeUpstream() as unpaced, FakeUpstream() as paced:
        for fake in (unpaced, paced):
            fake.limit(10, 2.0)  # 429 beyond 10 in a window, with Retry-After until it closes, as Azure
        proxies = {"unpaced": (make_proxy(unpaced, TOTAL_TIMEOUT="90", MAX_RETRIES="20"), unpaced),
                   "paced": (make_proxy(paced, TOTAL_TIMEOUT="90", MAX_RETRIES="20", RPM_LIMIT=str(PACED_RPM)),
                             paced)}

        def measure(name):
            shield, fake = proxies[name]
            began = time.monotonic()
            answers = burst(shield.port, BURST)
            results[name] = (answers, fake.limited, time.monotonic() - began)
        # Both at once, each against its own upstream: half the wall time.
        runs = [threading.Thread(target=measure, args=(name,)) for name in proxies]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join(120)
    (plain, plain_429s, plain_seconds), (paced_answers, paced_429s, paced_seconds) = results["unpaced"], \
        results["paced"]
    print("\nburst of %d against 10 per 2 s: without pacing %d 429s (%d delivered, %.1f s); with RPM_LIMIT=%d "
          "%d 429s (%d delivered, %.1f s)" % (BURST, plain_429s, plain.count(200), plain_seconds, PACED_RPM,
                                              paced_429s, paced_answers.count(200), paced_seconds))
    assert paced_answers == [200] * BURST
    assert plain_429s >= 20 and paced_429s * 5 <= plain_429s  # the burst did meet the limit without pacing

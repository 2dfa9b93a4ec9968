"""Failover without sockets: the pure decisions fed as data, and run() over several scripted endpoints with a
fake clock and one cool-down table shared by its requests."""

import json

import pytest

from retry_shield.chat_request import ChatPlan
from retry_shield.endpoints import Endpoint
from retry_shield.errors import ClientError, UpstreamFailure
from retry_shield.failover import (FAILURES_COOL_DOWN, GIVE_UP, MAX_COOL_DOWN, MOVE, STAY, WAIT_FOR, CoolDowns,
                                   FailoverSettings, Route, after_failure, after_misconfigured, after_queue,
                                   first_free, hold_cool_down)
from retry_shield.replies import give_up_reply
from retry_shield.retry import RetryPolicy
from retry_shield.shield import (DELIVERED, FINAL, GAVE_UP, GO, SUMMARY, TIMEOUT, Exchange, credentials_warning, run,
                                 summary)
from retry_shield.sse import StreamVerdict
from tests.test_engine import OUTBOUND, Clock, failure, good

SETTINGS = FailoverSettings(after_wait=20.0, after_failures=3)
ENDPOINTS = (Endpoint(0, "http://east.test/v1"), Endpoint(1, "http://west.test:8443/v1", model="dep-west"),
             Endpoint(2, "http://north.test/v1"))


# ---------------------------------------------------------------------------
# The decisions, as data
# ---------------------------------------------------------------------------


def decide(asked=None, wait=1.0, streak=1, attempts_left=True, deadline=700.0, until=(0.0, 0.0, 0.0), current=0,
           capped=""):
    return after_failure(100.0, current, streak, asked, wait, attempts_left, deadline, until, SETTINGS, capped)


def test_a_wait_up_to_failover_after_wait_stays_and_a_longer_one_moves_on():
    assert decide(asked=20.0, wait=20.0) == (STAY, 0, 20.0, None, "")
    step = decide(asked=20.5, wait=20.5)
    assert (step.action, step.endpoint, step.wait, step.cool_until) == (MOVE, 1, 0.0, 120.5)
    assert step.why == "it asks to wait 20.5 s (over FAILOVER_AFTER_WAIT=20)"  # not "20 s", which reads as no more


def test_a_cool_down_from_a_hint_lasts_the_wait_asked_at_most_an_hour():
    assert decide(asked=300.0, wait=300.0).cool_until == 400.0
    assert decide(asked=86400.0, wait=86400.0).cool_until == 100.0 + MAX_COOL_DOWN


def test_failures_in_a_row_move_on_after_failover_after_failures():
    assert decide(streak=2).action == STAY
    step = decide(streak=3)
    assert (step.action, step.endpoint, step.cool_until) == (MOVE, 1, 100.0 + FAILURES_COOL_DOWN)
    assert "3 failures in a row" in step.why


def test_the_next_endpoint_is_the_first_free_one_in_order():
    assert decide(streak=3, until=(0.0, 500.0, 0.0)).endpoint == 2
    assert decide(streak=3, current=1, until=(0.0, 0.0, 0.0)).endpoint == 0  # the primary is free again: first


def test_every_endpoint_cooling_down_waits_for_the_first_to_free_within_the_deadline():
    step = decide(streak=3, until=(0.0, 130.0, 125.0))
    assert (step.action, step.endpoint, step.wait) == (WAIT_FOR, 2, 25.0)
    assert step.cool_until == 160.0  # the endpoint left cools down all the same
    late = decide(streak=3, until=(0.0, 130.0, 125.0), deadline=120.0)
    assert late.action == GIVE_UP and late.cool_until == 160.0


def test_no_attempt_left_gives_up_but_still_cools_the_endpoint_down():
    step = decide(asked=120.0, wait=120.0, attempts_left=False)
    assert (step.action, step.cool_until) == (GIVE_UP, 220.0)
    assert decide(attempts_left=False).cool_until is None


def test_staying_gives_up_when_the_wait_would_pass_the_deadline():
    assert decide(wait=15.0, deadline=110.0).action == GIVE_UP


def test_first_free():
    assert first_free(100.0, (0.0, 0.0), 700.0) == (MOVE, 0, 0.0, None, "")
    assert first_free(100.0, (150.0, 100.0), 700.0).endpoint == 1  # free at exactly now
    assert first_free(100.0, (150.0, 130.0), 700.0)[:3] == (WAIT_FOR, 1, 30.0)
    assert first_free(100.0, (150.0, 130.0), 120.0).action == GIVE_UP


def test_a_misconfigured_fallback_cools_down_and_the_request_moves_on_if_it_can():
    step = after_misconfigured(100.0, 1, True, 700.0, (0.0, 0.0, 0.0))
    assert (step.action, step.endpoint, step.cool_until) == (MOVE, 0, 160.0)
    assert after_misconfigured(100.0, 1, True, 700.0, (500.0, 0.0, 0.0)).endpoint == 2
    assert after_misconfigured(100.0, 1, False, 700.0, (0.0, 0.0, 0.0)).action == GIVE_UP


def test_a_misconfigured_fallback_waits_for_the_first_other_endpoint_to_free_within_the_deadline():
    step = after_misconfigured(100.0, 1, True, 700.0, (500.0, 0.0, 900.0))
    assert (step.action, step.endpoint, step.wait, step.cool_until) == (WAIT_FOR, 0, 400.0, 160.0)
    # never itself, though its own 60 s end first: this request would get the same answer there
    assert after_misconfigured(100.0, 1, True, 700.0, (500.0, 0.0, 600.0)).endpoint == 0
    late = after_misconfigured(100.0, 1, True, 450.0, (500.0, 0.0, 900.0))
    assert (late.action, late.cool_until) == (GIVE_UP, 160.0)


def test_a_capped_kind_moves_on_and_never_waits_for_the_endpoint_it_leaves():
    step = decide(capped="3 attempts there failed as dns")
    assert (step.action, step.endpoint, step.cool_until, step.why) == (MOVE, 1, 160.0, "3 attempts there failed as dns")
    assert decide(capped="dns", until=(0.0, 1000.0, 1000.0)).action == GIVE_UP  # not WAIT_FOR its own 60 s


def test_after_a_queue_only_a_cool_down_moves_the_request():
    assert after_queue(100.0, 0, 700.0, (0.0, 0.0, 0.0)) is None  # the queue alone: it stays
    assert after_queue(100.0, 0, 700.0, (150.0, 0.0, 0.0))[:2] == (MOVE, 1)
    assert after_queue(100.0, 0, 700.0, (150.0, 120.0, 130.0)) is None  # none other is free: sent as planned


def test_cool_downs_are_shared_and_keep_the_longer_one():
    clock = Clock()
    table = CoolDowns(2, clock)
    table.cool(0, 220.0)
    table.cool(0, 150.0)
    assert table.until() == (220.0, 0.0) and table.remaining() == (120.0, 0.0)
    clock.now = 300.0
    assert table.remaining() == (0.0, 0.0)


def test_an_endpoint_shows_its_host_and_names_its_settings():
    assert [endpoint.host for endpoint in ENDPOINTS] == ["east.test", "west.test:8443", "north.test"]
    assert Endpoint(0, "https://key:secret@[::1]:9/v1?api-key=s").host == "[::1]:9"
    assert ENDPOINTS[0].setting("API_KEY") == "AZURE_API_KEY" and ENDPOINTS[2].setting("MODEL") == "FALLBACK_2_MODEL"


# ---------------------------------------------------------------------------
# run() over several endpoints
# ---------------------------------------------------------------------------


class Endpoints:
    """Scripted attempts per endpoint on one fake clock; ``route()`` is what the server gives run()."""

    def __init__(self, clock, plans, cool_downs=None, settings=SETTINGS, refuse=()):
        self.clock, self.plans = clock, {index: list(plan) for index, plan in plans.items()}
        self.cool_downs = cool_downs or CoolDowns(len(ENDPOINTS), clock)
        self.settings, self.refuse = settings, refuse
        self.calls, self.asked_waits, self.prepared = [], [], []

    def attempt_at(self, index):
        def attempt(number):
            self.calls.append((number, index))
            self.clock.now += 1.0
            step = self.plans[index].pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        return attempt

    def prepare(self, index):
        self.prepared.append(index)
        if index in self.refuse:
            raise ClientError(400, "n other than 1 is not supported by a Responses upstream")
        plan = ChatPlan("gpt-asked", frozenset(), {}, frozenset(), {}) if index == 1 else None
        outbound = OUTBOUND._replace(upstream_protocol="chat", url=ENDPOINTS[index].url + "/chat/completions",
                                     model_sent=ENDPOINTS[index].model or "gpt-sent", plan=plan)
        return outbound, self.attempt_at(index)

    def wait(self, seconds):
        self.asked_waits.append(seconds)
        self.clock.now += seconds
        return GO

    def run(self, max_retries=8, total=600.0, pace=None):
        policy = RetryPolicy(max_retries, 1.0, 30.0, total, rng=lambda: 1.0)
        route = Route(ENDPOINTS, self.cool_downs, self.settings, self.prepare)
        return run(Exchange.of("POST", "/v1/responses", OUTBOUND, self.clock.now), self.attempt_at(0), self.wait,
                   policy, lambda: False, self.clock, route=route, pace=pace)


def too_many(seconds):
    return failure(status=429, headers={"retry-after": str(seconds)})


def test_a_long_retry_after_moves_to_the_fallback_at_once_and_it_serves_in_its_own_protocol():
    clock = Clock()
    answer = good()
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [answer]})
    exchange = endpoints.run()
    assert exchange.outcome == DELIVERED and exchange.answer is answer
    assert endpoints.calls == [(1, 0), (2, 1)] and endpoints.asked_waits == []  # no wait at all
    assert (exchange.served_by, exchange.tried) == ("west.test:8443", ("east.test", "west.test:8443"))
    assert [attempt.endpoint for attempt in exchange.attempts] == [0, 1] and exchange.retries == 1
    # the reply is built with the serving endpoint's protocol, model and translation plan
    assert (exchange.upstream_protocol, exchange.model_sent) == ("chat", "dep-west")
    assert isinstance(exchange.plan, ChatPlan) and exchange.endpoint == "http://west.test:8443/v1/chat/completions"
    assert endpoints.cool_downs.until()[0] == 101.0 + 120  # from that answer, for the wait it asked


def test_a_short_retry_after_stays_on_the_primary():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(20), good()]})
    exchange = endpoints.run()
    assert exchange.served_by == "east.test" and endpoints.asked_waits == [20.0] and endpoints.prepared == []
    assert endpoints.cool_downs.until() == (0.0, 0.0, 0.0)


def test_after_failures_in_a_row_the_next_attempt_moves_on():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [failure()] * 3, 1: [good()]})
    exchange = endpoints.run()
    assert [index for _, index in endpoints.calls] == [0, 0, 0, 1]
    assert endpoints.asked_waits == [1.0, 2.0]  # the backoff while staying, none when moving
    assert exchange.served_by == "west.test:8443" and endpoints.cool_downs.until()[0] == clock.now - 1 + 60


def test_failures_in_a_row_are_counted_per_endpoint_anew_after_a_move():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [failure()] * 3, 1: [failure(), good()]})
    exchange = endpoints.run()
    assert [index for _, index in endpoints.calls] == [0, 0, 0, 1, 1]  # the fallback's first failure: it stays
    assert endpoints.asked_waits == [1.0, 2.0, 8.0] and exchange.served_by == "west.test:8443"


@pytest.mark.parametrize("answer", [good(status=400), good(status=401), good(status=413),
                                    good(verdict=StreamVerdict.FAILED)],
                         ids=["400", "401 on the primary", "413", "context_length_exceeded"])
def test_a_final_answer_never_fails_over(answer):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [answer], 1: [good()]})
    exchange = endpoints.run()
    assert exchange.outcome == FINAL and exchange.answer is answer and exchange.served_by == "east.test"
    assert endpoints.prepared == [] and endpoints.cool_downs.until() == (0.0, 0.0, 0.0)


def test_a_final_answer_on_a_fallback_is_the_client_s_answer():
    clock = Clock()
    answer = good(status=400)
    exchange = Endpoints(clock, {0: [too_many(120)], 1: [answer], 2: [good()]}).run()
    assert exchange.outcome == FINAL and exchange.answer is answer and exchange.served_by == "west.test:8443"


def test_a_fallback_that_refuses_the_credentials_is_misconfigured_cools_down_and_the_next_one_serves(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [good(status=401)], 2: [good()]})
    exchange = endpoints.run()
    assert exchange.outcome == DELIVERED and exchange.served_by == "north.test"
    assert exchange.tried == ("east.test", "west.test:8443", "north.test")
    assert endpoints.cool_downs.until()[1] == 102.0 + 60
    assert "FALLBACK_1 (west.test:8443) answered HTTP 401: that fallback is misconfigured (check FALLBACK_1_API_KEY)" \
        in caplog.text


def test_a_misconfigured_fallback_with_none_left_gives_the_client_its_answer():
    clock = Clock()
    refused = good(status=404)
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [refused], 2: [too_many(300)]},
                          settings=SETTINGS)
    endpoints.cool_downs.cool(2, 1000.0)
    exchange = endpoints.run(total=100.0)  # the primary frees only after TOTAL_TIMEOUT
    assert exchange.outcome == FINAL and exchange.answer is refused and exchange.served_by == "west.test:8443"
    assert "FALLBACK_1 refused" not in (credentials_warning(exchange, None) or "")  # a 404 is no credentials issue


def test_credentials_warning_names_the_fallback_whose_answer_the_client_got():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [good(status=403)]})
    endpoints.cool_downs.cool(2, 1000.0)
    exchange = endpoints.run(total=100.0)
    assert exchange.answer.status == 403
    assert "check FALLBACK_1_API_KEY" in credentials_warning(exchange, None)


def test_the_cool_down_is_shared_by_the_next_requests_and_the_primary_comes_back_after_it():
    clock = Clock()
    shared = CoolDowns(len(ENDPOINTS), clock)
    first = Endpoints(clock, {0: [too_many(120)], 1: [good()]}, cool_downs=shared).run()
    assert first.tried == ("east.test", "west.test:8443")
    clock.now += 60  # within the primary's 120 s
    second = Endpoints(clock, {0: [good()], 1: [good()]}, cool_downs=shared).run()
    assert second.tried == ("west.test:8443",) and second.attempts[0].endpoint == 1
    clock.now = 101.0 + 120  # the primary's cool-down is over: it is tried first again
    third = Endpoints(clock, {0: [good()], 1: [good()]}, cool_downs=shared).run()
    assert third.tried == ("east.test",)


def test_every_endpoint_cooling_down_waits_for_the_first_to_free():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [good()], 1: [good()], 2: [good()]})
    for index, until in enumerate((150.0, 130.0, 140.0)):
        endpoints.cool_downs.cool(index, until)
    exchange = endpoints.run()
    assert endpoints.asked_waits == [30.0] and exchange.served_by == "west.test:8443"
    assert exchange.retries == 0 and exchange.waited == 30.0


def test_every_endpoint_cooling_down_past_total_timeout_sends_nothing_and_answers_503_with_retry_after():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [good()]})
    for index in range(3):
        endpoints.cool_downs.cool(index, 100.0 + 900 + index)
    exchange = endpoints.run()
    assert exchange.outcome == GAVE_UP and endpoints.calls == [] and exchange.attempts == ()
    reply = give_up_reply(exchange.failure, 0)
    assert reply.status == 503 and ("Retry-After", "900") in reply.headers
    assert json.loads(reply.body)["error"]["code"] == "cooling_down"


def test_max_retries_counts_attempts_across_endpoints():
    clock = Clock()
    last = failure(status=503)
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [last], 2: [good()]})
    exchange = endpoints.run(max_retries=1)
    assert exchange.outcome == GAVE_UP and exchange.failure is last and len(exchange.attempts) == 2
    assert exchange.served_by == ""


def test_a_fallback_that_cannot_take_the_request_is_skipped(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(120)], 2: [good()]}, refuse=(1,))
    exchange = endpoints.run()
    assert exchange.served_by == "north.test" and [index for _, index in endpoints.calls] == [0, 2]
    assert "FALLBACK_1 (west.test:8443) cannot take this request" in caplog.text


def test_the_summary_line_names_the_hosts_only_with_fallbacks():
    clock = Clock()
    exchange = Endpoints(clock, {0: [too_many(120)], 1: [good()]}).run()
    line = SUMMARY % summary(exchange)
    assert line == ("POST /v1/responses 200 attempts=2 bytes=10 time=2.00s model=dep-west api=responses->chat "
                    "served_by=west.test:8443 tried=east.test,west.test:8443 tokens=3/4 (complete)")
    gave_up = Endpoints(clock, {0: [UpstreamFailure("tls", "untrusted", retryable=False)]}).run()
    assert " served_by=- tried=east.test " in SUMMARY % summary(gave_up)


def test_a_misconfigured_fallback_waits_for_the_primary_that_frees_within_total_timeout(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(30), good()], 1: [good(status=401)]})
    endpoints.cool_downs.cool(2, 1000.0)
    exchange = endpoints.run()
    assert exchange.outcome == DELIVERED and exchange.served_by == "east.test"
    assert exchange.tried == ("east.test", "west.test:8443", "east.test")
    assert endpoints.asked_waits == [29.0]  # until the 30 s the primary asked for, from its answer at 101
    assert (exchange.retries, exchange.waited) == (2, 29.0)
    assert "answered HTTP 401: that fallback is misconfigured (check FALLBACK_1_API_KEY); it cools down for 60 s; " \
        "every other endpoint is cooling down: waiting 29.0 s for the primary (east.test)" in caplog.text


def dns_failure(host="east.test"):
    return UpstreamFailure("dns", "cannot resolve %s; check AZURE_ENDPOINT" % host)


def test_a_primary_whose_name_does_not_resolve_fails_over_after_its_three_attempts():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [dns_failure() for _ in range(3)], 1: [good()]},
                          settings=SETTINGS._replace(after_failures=5))  # the DNS cap, not failures in a row
    exchange = endpoints.run()
    assert [index for _, index in endpoints.calls] == [0, 0, 0, 1]
    assert exchange.outcome == DELIVERED and exchange.served_by == "west.test:8443"
    assert endpoints.cool_downs.until()[0] == 106.0 + FAILURES_COOL_DOWN  # from its third failure


def test_dns_failures_are_counted_per_stay_so_each_fallback_gets_its_own_attempts(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [dns_failure() for _ in range(3)],
                                  1: [dns_failure("west.test") for _ in range(3)], 2: [good()]})
    exchange = endpoints.run()
    assert [index for _, index in endpoints.calls] == [0, 0, 0, 1, 1, 1, 2]
    assert exchange.served_by == "north.test"
    assert exchange.attempts[3].detail == "cannot resolve west.test; check FALLBACK_1_ENDPOINT"
    assert "attempt 4/9 failed on west.test:8443: cannot resolve west.test; check FALLBACK_1_ENDPOINT; " \
        "retrying in 8.0 s" in caplog.text


def test_a_name_that_does_not_resolve_gives_up_when_no_other_endpoint_can_serve_in_time():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [dns_failure() for _ in range(3)]})
    endpoints.cool_downs.cool(1, 1000.0)
    endpoints.cool_downs.cool(2, 1000.0)
    exchange = endpoints.run()
    assert exchange.outcome == GAVE_UP and exchange.failure.kind == "dns" and len(exchange.attempts) == 3
    assert exchange.failure.detail == "cannot resolve east.test; check AZURE_ENDPOINT"


TLS = "the upstream's TLS certificate is not trusted (self-signed); check AZURE_ENDPOINT, or set SSL_CERT_FILE"
WRONG = "the upstream answered a Responses request with a Chat Completions stream: it speaks only Chat " \
    "Completions; set UPSTREAM_API=chat"


def test_a_fallback_s_tls_failure_marks_it_misconfigured_and_the_next_one_serves(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [UpstreamFailure("tls", TLS, retryable=False)],
                                  2: [good()]})
    exchange = endpoints.run()
    assert exchange.outcome == DELIVERED and exchange.served_by == "north.test"
    assert endpoints.cool_downs.until()[1] == 102.0 + FAILURES_COOL_DOWN
    assert "attempt 2/9 failed on west.test:8443: the upstream's TLS certificate is not trusted (self-signed); " \
        "check FALLBACK_1_ENDPOINT, or set SSL_CERT_FILE; it cools down for 60 s (that fallback is misconfigured: " \
        "check FALLBACK_1_ENDPOINT); moving to FALLBACK_2 (north.test)" in caplog.text


def test_a_fallback_s_wrong_api_with_none_left_gives_the_client_a_message_naming_its_settings():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [too_many(120)], 1: [UpstreamFailure("wrong_api", WRONG, retryable=False)]})
    endpoints.cool_downs.cool(2, 1000.0)
    exchange = endpoints.run(total=100.0)
    assert exchange.outcome == GAVE_UP and exchange.failure.kind == "wrong_api"
    assert endpoints.cool_downs.until()[1] == 102.0 + FAILURES_COOL_DOWN
    message = json.loads(give_up_reply(exchange.failure, len(exchange.attempts)).body)["error"]["message"]
    assert "set FALLBACK_1_UPSTREAM_API=chat" in message and " UPSTREAM_API" not in message


class Pacing:
    """pace() for run(): each call is answered from ``turns`` (turn, seconds queued, what else happens meanwhile)."""

    def __init__(self, clock, turns):
        self.clock, self.turns, self.asked = clock, list(turns), []

    def __call__(self, index):
        self.asked.append(index)
        turn, queued, meanwhile = self.turns.pop(0)
        self.clock.now += queued
        if meanwhile:
            meanwhile()
        return turn, queued


def test_a_request_that_waited_its_turn_moves_if_its_endpoint_began_cooling_down_meanwhile(caplog):
    clock = Clock()
    endpoints = Endpoints(clock, {0: [good()], 1: [good()]})
    pace = Pacing(clock, [(GO, 5.0, lambda: endpoints.cool_downs.cool(0, 220.0)), (GO, 0.0, None)])
    exchange = endpoints.run(pace=pace)
    assert endpoints.calls == [(1, 1)] and pace.asked == [0, 1]  # nothing was sent to the primary
    assert exchange.served_by == "west.test:8443" and exchange.queued == 5.0 and exchange.retries == 0
    assert "the primary (east.test) began cooling down while this request waited its turn; moving to FALLBACK_1" \
        in caplog.text


def test_a_queued_request_does_not_jump_to_a_fallback_because_of_the_queue_alone():
    clock = Clock()
    endpoints = Endpoints(clock, {0: [good()], 1: [good()]})
    exchange = endpoints.run(pace=Pacing(clock, [(GO, 5.0, None)]))
    assert endpoints.calls == [(1, 0)] and endpoints.prepared == [] and exchange.served_by == "east.test"
    timed_out = Endpoints(clock, {0: [good()], 1: [good()]})
    exchange = timed_out.run(pace=Pacing(clock, [(TIMEOUT, 20.0, None)]))
    assert exchange.outcome == GAVE_UP and exchange.failure.kind == "paced"
    assert timed_out.calls == [] and timed_out.prepared == []  # nothing prepared, let alone sent, for endpoint 1


def test_a_hold_over_failover_after_wait_cools_the_endpoint_down():
    settings = FailoverSettings(after_wait=20.0, after_failures=3)
    assert hold_cool_down(100.0, 20.0, settings) is None  # not over: the queue waits it out
    assert hold_cool_down(100.0, 20.5, settings) == 120.5
    assert hold_cool_down(100.0, 86400.0, settings) == 100.0 + 3600.0  # at most an hour

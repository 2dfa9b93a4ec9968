"""Fallback endpoints end to end: the real proxy in front of several scripted upstreams on loopback at once."""

import json
import logging
import time

import pytest

from retry_shield.config import load_config
from retry_shield.errors import ConfigError
from retry_shield.main import main
from tests.fake_upstream import failed, good, status
from tests.helpers import assert_one_line_error, main_in_process, post, request
from tests.test_mistakes import UNRESOLVABLE, invalid_does_not_resolve  # noqa: F401 (a fixture)
from tests.test_usage_log import records_of, settled

PRIMARY_KEY = "primary-key-0123456789"
FALLBACK_KEY = "fallback-key-9876543210"
CODEX_LIKE = {"model": "gpt-5.5", "input": "hi", "stream": True}


def busy(seconds):
    return status(429, headers={"Retry-After": str(seconds)})


def health(shield):
    return json.loads(request(shield.port, "GET", "/health", body=None)[2])


def events_of(body):
    return [json.loads(line[len(b"data: "):]) for line in body.split(b"\n") if line.startswith(b"data: {")]


def text_of(body):
    """The text of a Responses stream's completed response."""
    completed = [event for event in events_of(body) if event.get("type") == "response.completed"]
    assert len(completed) == 1, body[:500]
    return "".join(part["text"] for item in completed[0]["response"]["output"] if item["type"] == "message"
                   for part in item["content"])


def with_fallbacks(make_proxy, primary, *fallbacks, **settings):
    for number, fallback in enumerate(fallbacks, 1):
        settings.setdefault("FALLBACK_%d_ENDPOINT" % number, fallback.url + "/v1")
    return make_proxy(primary, **settings)


def summary_lines(caplog):
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("POST /v1/")]


def test_a_long_retry_after_moves_to_the_fallback_at_once(upstream, make_upstream, make_proxy, caplog):
    caplog.set_level(logging.INFO)
    fallback = make_upstream()
    upstream.plan(busy(120))
    fallback.plan(good(text="from the fallback"))
    shield = with_fallbacks(make_proxy, upstream, fallback)
    began = time.monotonic()
    code, _, body = post(shield.port, body=CODEX_LIKE)
    seconds = time.monotonic() - began
    assert code == 200 and text_of(body) == "from the fallback"
    assert (upstream.attempts, fallback.attempts) == (1, 1)
    assert seconds < 60, seconds  # not the 120 s the primary asked for
    primary_host, fallback_host = "127.0.0.1:%d" % upstream.port, "127.0.0.1:%d" % fallback.port
    line, = summary_lines(caplog)
    assert line.startswith("POST /v1/responses 200 attempts=2 ")
    assert " served_by=%s tried=%s,%s " % (fallback_host, primary_host, fallback_host) in line
    assert "it asks to wait 120 s (over FAILOVER_AFTER_WAIT=20)" in caplog.text
    endpoints = health(shield)["endpoints"]
    assert [(entry["host"], entry["served"], entry["failed"]) for entry in endpoints] == [
        (primary_host, 0, 1), (fallback_host, 1, 0)]
    assert 100 < endpoints[0]["cooling_down_s"] <= 120 and endpoints[1]["cooling_down_s"] == 0


def test_failures_in_a_row_move_on(upstream, make_upstream, make_proxy):
    fallback = make_upstream()
    upstream.plan(status(503))
    shield = with_fallbacks(make_proxy, upstream, fallback, FAILOVER_AFTER_FAILURES="2")
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and (upstream.attempts, fallback.attempts) == (2, 1)
    assert health(shield)["endpoints"][0]["cooling_down_s"] > 50  # 60 s after failures in a row


@pytest.mark.parametrize("answer", [status(400), status(401), status(413), failed(code="context_length_exceeded")],
                         ids=["400", "401 on the primary", "413", "context_length_exceeded"])
def test_a_final_answer_never_fails_over(upstream, make_upstream, make_proxy, answer):
    fallback = make_upstream()
    upstream.plan(answer)
    shield = with_fallbacks(make_proxy, upstream, fallback)
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert (upstream.attempts, fallback.attempts) == (1, 0)
    assert code == (answer.status if answer.kind == "status" else 200)
    assert [entry["cooling_down_s"] for entry in health(shield)["endpoints"]] == [0, 0]


def test_the_cool_down_is_shared_across_requests_and_the_primary_comes_back_after_it(upstream, make_upstream,
                                                                                      make_proxy):
    fallback = make_upstream()
    upstream.plan(busy(3), good(text="primary again"))
    fallback.plan(good(text="fallback"))
    # 3 s: time enough for the second request to come while the primary still cools down, however slow the machine
    shield = with_fallbacks(make_proxy, upstream, fallback, FAILOVER_AFTER_WAIT="2")
    assert text_of(post(shield.port, body=CODEX_LIKE)[2]) == "fallback"
    assert text_of(post(shield.port, body=CODEX_LIKE)[2]) == "fallback"  # the next request starts on the fallback
    assert (upstream.attempts, fallback.attempts) == (1, 2)
    deadline = time.monotonic() + 10
    while health(shield)["endpoints"][0]["cooling_down_s"] > 0:  # the cool-down itself: the 3 s the primary asked for
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert text_of(post(shield.port, body=CODEX_LIKE)[2]) == "primary again"
    assert (upstream.attempts, fallback.attempts) == (2, 2)


def test_each_endpoint_gets_its_own_model_key_and_protocol(make_upstream, make_proxy):
    """A Responses-only primary and a chat-only fallback: Codex's request is translated for the fallback only,
    each gets its own model and key, and the answer comes back as a Responses stream."""
    primary, fallback = make_upstream(speaks=("responses",)), make_upstream(speaks=("chat",))
    primary.plan(busy(120))
    fallback.plan(good(text="translated from chat"))
    shield = with_fallbacks(make_proxy, primary, fallback, AZURE_API_KEY=PRIMARY_KEY, FORCED_MODEL="gpt-primary",
                            FALLBACK_1_API_KEY=FALLBACK_KEY, FALLBACK_1_MODEL="dep-west",
                            FALLBACK_1_UPSTREAM_API="chat")
    code, headers, body = post(shield.port, body=CODEX_LIKE, headers={"Authorization": "Bearer client-dummy"})
    assert code == 200 and headers["content-type"].startswith("text/event-stream")
    assert text_of(body) == "translated from chat"
    to_primary, = primary.requests
    to_fallback, = fallback.requests
    assert (to_primary.path, to_primary.json["model"]) == ("/v1/responses", "gpt-primary")
    assert (to_fallback.path, to_fallback.json["model"]) == ("/v1/chat/completions", "dep-west")
    assert to_fallback.json["messages"] == [{"role": "user", "content": "hi"}]
    assert (to_primary.headers["api-key"], to_primary.headers["authorization"]) == (PRIMARY_KEY,
                                                                                    "Bearer " + PRIMARY_KEY)
    assert (to_fallback.headers["api-key"], to_fallback.headers["authorization"]) == (FALLBACK_KEY,
                                                                                      "Bearer " + FALLBACK_KEY)
    assert FALLBACK_KEY not in json.dumps(to_primary.headers) and PRIMARY_KEY not in json.dumps(to_fallback.headers)
    assert "client-dummy" not in json.dumps(to_primary.headers) + json.dumps(to_fallback.headers)


def test_a_fallback_without_a_key_gets_the_client_s_credentials_never_the_primary_s(upstream, make_upstream,
                                                                                     make_proxy):
    fallback = make_upstream()
    upstream.plan(busy(120))
    shield = with_fallbacks(make_proxy, upstream, fallback, AZURE_API_KEY=PRIMARY_KEY, FALLBACK_1_API_KEY="")
    assert post(shield.port, body=CODEX_LIKE, headers={"Authorization": "Bearer client-own-key"})[0] == 200
    seen = fallback.requests[-1].headers
    assert seen["authorization"] == "Bearer client-own-key" and "api-key" not in seen
    assert PRIMARY_KEY not in json.dumps(seen)


def test_a_misconfigured_fallback_is_named_cooled_down_and_skipped(upstream, make_upstream, make_proxy, caplog):
    first, second = make_upstream(), make_upstream()
    upstream.plan(busy(120))
    first.plan(status(401))
    second.plan(good(text="from the second"))
    shield = with_fallbacks(make_proxy, upstream, first, second, FALLBACK_1_API_KEY=FALLBACK_KEY)
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and text_of(body) == "from the second"
    assert "FALLBACK_1 (127.0.0.1:%d) answered HTTP 401: that fallback is misconfigured (check FALLBACK_1_API_KEY); " \
        "it cools down for 60 s" % first.port in caplog.text
    assert FALLBACK_KEY not in caplog.text
    assert health(shield)["endpoints"][1]["cooling_down_s"] > 50
    # the next request starts on the second: the primary and the first are cooling down, so not asked
    code, _, _ = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and (upstream.attempts, first.attempts, second.attempts) == (1, 1, 2)


def test_a_misconfigured_last_fallback_s_answer_reaches_the_client(upstream, make_upstream, make_proxy, caplog):
    fallback = make_upstream()
    upstream.plan(busy(120))
    fallback.plan(status(404))
    shield = with_fallbacks(make_proxy, upstream, fallback)
    assert post(shield.port, body=CODEX_LIKE)[0] == 404
    assert "no other endpoint can serve within TOTAL_TIMEOUT, so the client gets this answer" in caplog.text


def test_every_endpoint_cooling_down(upstream, make_upstream, make_proxy):
    fallback = make_upstream()
    upstream.plan(busy(120))
    fallback.plan(busy(300))
    shield = with_fallbacks(make_proxy, upstream, fallback)
    code, headers, _ = post(shield.port, body=CODEX_LIKE)
    assert code == 429 and headers["retry-after"] == "300"  # the last upstream's answer: nothing frees in time
    assert (upstream.attempts, fallback.attempts) == (1, 1)
    code, headers, body = post(shield.port, body=CODEX_LIKE)  # nothing is sent while every endpoint cools down
    assert code == 503 and json.loads(body)["error"]["code"] == "cooling_down"
    assert 100 < int(headers["retry-after"]) <= 120
    assert (upstream.attempts, fallback.attempts) == (1, 1)


def test_without_fallbacks_the_summary_line_is_today_s_and_health_lists_one_endpoint(upstream, make_proxy, caplog):
    caplog.set_level(logging.INFO)
    upstream.plan(status(503), good())
    shield = make_proxy(upstream)
    assert post(shield.port, body=CODEX_LIKE)[0] == 200
    line, = summary_lines(caplog)
    assert "served_by" not in line and "tried" not in line
    assert "failed: HTTP 503" in caplog.text and " on 127.0.0.1" not in caplog.text
    entry, = health(shield)["endpoints"]
    assert entry == {"name": "primary", "host": "127.0.0.1:%d" % upstream.port, "served": 1, "failed": 1,
                     "cooling_down_s": 0}


def test_health_names_each_endpoint_so_two_on_one_host_are_told_apart(upstream, make_proxy):
    shield = make_proxy(upstream, FALLBACK_1_ENDPOINT=upstream.url + "/other/v1")
    endpoints = health(shield)["endpoints"]
    assert [(entry["name"], entry["host"]) for entry in endpoints] == [
        ("primary", "127.0.0.1:%d" % upstream.port), ("FALLBACK_1", "127.0.0.1:%d" % upstream.port)]


def test_a_primary_whose_name_does_not_resolve_fails_over(invalid_does_not_resolve, make_upstream, make_proxy,
                                                         caplog):
    fallback = make_upstream()
    fallback.plan(good(text="from the fallback"))
    shield = make_proxy(fallback, AZURE_ENDPOINT="http://%s:9/v1" % UNRESOLVABLE,
                        FALLBACK_1_ENDPOINT=fallback.url + "/v1", MAX_RETRIES="8")
    code, _, body = post(shield.port, body=CODEX_LIKE, timeout=60)
    assert code == 200 and text_of(body) == "from the fallback" and fallback.attempts == 1
    failed = [record.getMessage() for record in caplog.records if "failed on %s" % UNRESOLVABLE in record.getMessage()]
    assert len(failed) == 3 and "3 attempts there failed as dns" in failed[-1]
    assert "check AZURE_ENDPOINT" in failed[-1] and failed[-1].endswith("moving to FALLBACK_1 (127.0.0.1:%d)"
                                                                        % fallback.port)


def test_a_misconfigured_fallback_waits_for_the_primary_that_frees_in_time(upstream, make_upstream, make_proxy,
                                                                          caplog):
    fallback = make_upstream()
    upstream.plan(busy(3), good(text="from the primary"))
    fallback.plan(status(401))
    # 3 s: the fallback's 401 comes back while the primary still cools down, however slow the machine
    shield = with_fallbacks(make_proxy, upstream, fallback, FAILOVER_AFTER_WAIT="2")
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and text_of(body) == "from the primary"
    assert (upstream.attempts, fallback.attempts) == (2, 1)
    assert "that fallback is misconfigured (check FALLBACK_1_API_KEY); it cools down for 60 s; every other " \
        "endpoint is cooling down: waiting" in caplog.text


def test_a_fallback_that_does_not_speak_tls_is_misconfigured_and_its_settings_are_named(upstream, make_upstream,
                                                                                      make_proxy, caplog):
    plain, second = make_upstream(), make_upstream()
    upstream.plan(busy(120))
    second.plan(good(text="from the second"))
    shield = make_proxy(upstream, FALLBACK_1_ENDPOINT="https://127.0.0.1:%d/v1" % plain.port,
                        FALLBACK_2_ENDPOINT=second.url + "/v1")
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and text_of(body) == "from the second"
    assert "use http:// in FALLBACK_1_ENDPOINT for a plain HTTP upstream; it cools down for 60 s (that fallback is " \
        "misconfigured: check FALLBACK_1_ENDPOINT); moving to FALLBACK_2" in caplog.text
    assert health(shield)["endpoints"][1]["cooling_down_s"] > 50
    # with none left, the client gets that failure, naming the fallback's setting, not the primary's
    only = make_proxy(upstream, FALLBACK_1_ENDPOINT="https://127.0.0.1:%d/v1" % plain.port)
    upstream.plan(busy(120))
    code, _, body = post(only.port, body=CODEX_LIKE)
    message = json.loads(body)["error"]["message"]
    assert code == 502 and "use http:// in FALLBACK_1_ENDPOINT" in message and "AZURE_ENDPOINT" not in message


def test_a_queued_request_does_not_jump_to_the_fallback_because_of_the_queue_alone(upstream, make_upstream,
                                                                                 make_proxy):
    # RPM_LIMIT=1 is a bucket of one request refilled once a minute: the second request's turn cannot come
    # within TOTAL_TIMEOUT, and the primary is not cooling down, so the free fallback is not asked.
    fallback = make_upstream()
    shield = with_fallbacks(make_proxy, upstream, fallback, RPM_LIMIT="1", TOTAL_TIMEOUT="2")
    assert post(shield.port, body=CODEX_LIKE)[0] == 200
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 504 and json.loads(body)["error"]["code"] == "paced"
    assert (upstream.attempts, fallback.attempts) == (1, 0)


def test_the_usage_log_names_the_hosts_tried_and_the_one_that_served(upstream, make_upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    fallback = make_upstream()
    upstream.plan(busy(120))
    shield = with_fallbacks(make_proxy, upstream, fallback, USAGE_LOG=str(path))
    assert post(shield.port, body=CODEX_LIKE)[0] == 200
    settled(shield.port)
    [record] = records_of(path)
    primary_host, fallback_host = "127.0.0.1:%d" % upstream.port, "127.0.0.1:%d" % fallback.port
    assert (record["served_by"], record["tried"]) == (fallback_host, [primary_host, fallback_host])
    assert [attempt["kind"] for attempt in record["attempts"]] == ["status", "ok"]


# -- settings ---------------------------------------------------------------------------------------------------------

ENDPOINT = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("settings, named", [
    ({"FALLBACK_2_ENDPOINT": "http://127.0.0.1:10/v1"}, "FALLBACK_2_ENDPOINT is set but FALLBACK_1_ENDPOINT is not"),
    ({"FALLBACK_1_API_KEY": "k" * 20}, "FALLBACK_1_API_KEY is set but FALLBACK_1_ENDPOINT is not"),
    ({"FALLBACK_1_ENDPOINT": "http://127.0.0.1:10/v1", "FALLBACK_2_MODEL": "m"},
     "FALLBACK_2_MODEL is set but FALLBACK_2_ENDPOINT is not"),
    ({"FALLBACK_1_ENDPOINT": "not a url"}, "FALLBACK_1_ENDPOINT='not a url' is not an http(s) URL"),
    ({"FALLBACK_1_ENDPOINT": "https://YOUR-RESOURCE.openai.azure.com/openai/v1"},
     "FALLBACK_1_ENDPOINT still holds the placeholder"),
    ({"FALLBACK_1_ENDPONT": "http://127.0.0.1:10/v1"}, "did you mean FALLBACK_1_ENDPOINT?"),
    ({"FALLBACK_0_ENDPOINT": "http://127.0.0.1:10/v1"}, "fallbacks are numbered from 1"),
    ({"FALLBACK_1_ENDPOINT": "http://127.0.0.1:10/v1", "FALLBACK_1_UPSTREAM_API": "soap"},
     "FALLBACK_1_UPSTREAM_API='soap' is not an API"),
    ({"FALLBACK_1_ENDPOINT": "http://h.test/v1/chat/completions", "FALLBACK_1_UPSTREAM_API": "responses"},
     "FALLBACK_1_ENDPOINT is a /chat/completions URL but FALLBACK_1_UPSTREAM_API=responses"),
    ({"FAILOVER_AFTER_FAILURES": "0"}, "FAILOVER_AFTER_FAILURES='0' is not valid"),
    ({"FALLBACK_1_ENDPOINT": "http://127.0.0.1:10/v1", "FALLBACK_1_QUOTA": "5"},
     "FALLBACK_1_QUOTA is not a setting; a fallback has FALLBACK_1_ENDPOINT, _API_KEY, _MODEL, _UPSTREAM_API and "
     "_RPM_LIMIT"),
    ({"FALLBACK_1_ENDPOINT": "http://127.0.0.1:10/v1", "FALLBACK_1_RPM_LIMIT": "-1"},
     "FALLBACK_1_RPM_LIMIT='-1' is not valid"),
], ids=["gap", "key without endpoint", "model without endpoint", "not a URL", "placeholder", "misspelled", "zero",
        "bad api", "api contradicts url", "failures zero", "unknown suffix", "bad rpm"])
def test_a_bad_fallback_setting_stops_start_up_with_one_line(environ, taken_port, capsys, settings, named):
    environ.update(AZURE_ENDPOINT=ENDPOINT, PORT=str(taken_port), **settings)
    code, _, err = main_in_process([], capsys)
    assert_one_line_error(code, err, named)


def test_help_lists_the_fallback_settings_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  FALLBACK_")}
    assert lines["FALLBACK_n_UPSTREAM_API"].endswith("[default: auto]")
    assert lines["FALLBACK_n_RPM_LIMIT"].endswith("[default: 0]")
    assert "[default:" not in lines["FALLBACK_n_ENDPOINT"] + lines["FALLBACK_n_API_KEY"] + lines["FALLBACK_n_MODEL"]


def test_a_misspelled_fallback_key_in_env_is_named(environ, taken_port, capsys, tmp_path):
    env_file = tmp_path / "fallbacks.env"
    env_file.write_text("AZURE_ENDPOINT=%s\nPORT=%d\nFALLBACK_1_ENDPOINT=http://127.0.0.1:10/v1\n"
                        "FALLBACK_1_API_KEYS=abcdefghijkl\n" % (ENDPOINT, taken_port))
    code, _, err = main_in_process(["--env-file", str(env_file)], capsys)
    assert_one_line_error(code, err, "FALLBACK_1_API_KEYS", "did you mean FALLBACK_1_API_KEY?")


def test_fallback_settings_are_read_in_order_and_empty_means_unset():
    config = load_config([], {"AZURE_ENDPOINT": ENDPOINT, "FORCED_MODEL": "gpt-all", "AZURE_API_KEY": PRIMARY_KEY,
                              "FALLBACK_1_ENDPOINT": "http://127.0.0.1:10/v1", "FALLBACK_1_MODEL": "dep-1",
                              "FALLBACK_1_API_KEY": FALLBACK_KEY, "FALLBACK_1_RPM_LIMIT": "120",
                              "RPM_LIMIT": "300", "FALLBACK_2_ENDPOINT": "http://127.0.0.1:11/v1/chat/completions",
                              "FALLBACK_2_MODEL": " ", "FALLBACK_3_ENDPOINT": "", "FALLBACK_3_MODEL": ""})
    primary, first, second = config.endpoints
    assert (primary.url, primary.api_key, primary.model) == (ENDPOINT, PRIMARY_KEY, "gpt-all")
    assert (first.number, first.model, first.api_key, first.upstream_api) == (1, "dep-1", FALLBACK_KEY, "auto")
    assert (second.number, second.model, second.api_key) == (2, "gpt-all", "")  # FORCED_MODEL where none is given
    assert (primary.rpm_limit, first.rpm_limit, second.rpm_limit) == (300, 120, 0)  # each its own; 0: no limit
    assert FALLBACK_KEY in config.secrets and PRIMARY_KEY in config.secrets


def test_a_fallback_is_paced_by_its_own_rpm_limit(upstream, make_upstream, make_proxy):
    # FALLBACK_1_RPM_LIMIT=1 is a bucket of one request refilled once a minute: the fallback's
    # second request cannot have its turn within TOTAL_TIMEOUT, while the primary has no limit.
    fallback = make_upstream()
    upstream.plan(busy(120))
    fallback.plan(good(text="from the fallback"))
    shield = with_fallbacks(make_proxy, upstream, fallback, FALLBACK_1_RPM_LIMIT="1", TOTAL_TIMEOUT="5")
    assert post(shield.port, body=CODEX_LIKE)[0] == 200
    code, _, body = post(shield.port, body=CODEX_LIKE)  # the primary cools down: this one goes to the fallback
    assert code == 504 and json.loads(body)["error"]["code"] == "paced"
    assert (upstream.attempts, fallback.attempts) == (1, 1)


def test_an_upstream_that_says_none_remain_for_long_sends_new_requests_to_the_fallback(upstream, make_upstream,
                                                                                       make_proxy, caplog):
    # Its 200 says no request remains for 60 s (over FAILOVER_AFTER_WAIT=20): new requests go to the
    # fallback at once instead of waiting in the primary's queue (TOTAL_TIMEOUT=5 would end them there).
    caplog.set_level(logging.INFO)
    fallback = make_upstream()
    upstream.plan(good(headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"}))
    fallback.plan(good(text="from the fallback"))
    shield = with_fallbacks(make_proxy, upstream, fallback, TOTAL_TIMEOUT="5")
    assert post(shield.port, body=CODEX_LIKE)[0] == 200
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and text_of(body) == "from the fallback"
    assert (upstream.attempts, fallback.attempts) == (1, 1)
    assert "127.0.0.1:%d cools down for 60.0 s: it says 0 requests remain" % upstream.port in caplog.text
    assert 50 < health(shield)["endpoints"][0]["cooling_down_s"] <= 60


def test_a_fallback_refusing_the_body_as_one_of_the_other_api_is_misconfigured(upstream, make_upstream, make_proxy,
                                                                              caplog):
    # FALLBACK_1 is a base URL (UPSTREAM_API auto) of a chat-only server that answers the Codex body at
    # /v1/responses with the chat handler's 400: that fallback needs FALLBACK_1_UPSTREAM_API=chat.
    first, second = make_upstream(), make_upstream()
    upstream.plan(busy(120))
    first.plan(status(400, body={"error": {"message": "Missing required parameter: 'messages'.",
                                           "type": "invalid_request_error", "param": "messages"}}))
    second.plan(good(text="from the second fallback"))
    shield = with_fallbacks(make_proxy, upstream, first, second)
    code, _, body = post(shield.port, body=CODEX_LIKE)
    assert code == 200 and text_of(body) == "from the second fallback"
    assert (upstream.attempts, first.attempts, second.attempts) == (1, 1, 1)
    assert "refused the body as one of the other API (HTTP 400): that fallback is misconfigured (check " \
           "FALLBACK_1_UPSTREAM_API)" in caplog.text


def test_without_fallbacks_nothing_changes_in_the_config():
    config = load_config([], {"AZURE_ENDPOINT": ENDPOINT})
    assert config.fallbacks == () and len(config.endpoints) == 1
    with pytest.raises(ConfigError):
        load_config([], {"AZURE_ENDPOINT": ENDPOINT, "FALLBACK_3_ENDPOINT": ENDPOINT})

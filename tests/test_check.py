"""``python proxy.py --check``: one small streamed request to the upstream, what came back, what to fix.

The real main() in this process (and once the real script) against real fake upstreams on
127.0.0.1:0: both APIs, one of them, neither, refusals, a cut stream, TLS, an unresolvable name
and a port nobody listens on. PORT is always a port another socket holds, so a check that
started the server would fail with exit 2 instead of passing. The diagnosis itself is pure
and tested as data.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
import trustme

import proxy
from retry_shield.check import DEFAULT_MODEL, MAX_TOKENS, check_request, probe_urls, reported_model
from retry_shield.check_diagnosis import Probe, api_advice, cause, works
from retry_shield.endpoints import Endpoint
from retry_shield.sse import StreamVerdict
from tests.fake_upstream import (FakeUpstream, chat_stream, cut, good, no_terminator, raw, reset, responses_stream,
                                 stall, status)
from tests.helpers import assert_one_line_error, main_in_process
from tests.test_mistakes import UNRESOLVABLE, invalid_does_not_resolve  # noqa: F401 - a fixture

KEY = "sk-check-secret-0123456789"


def bound_not_listening():
    """A port bound by this test but not listening: a connection to it is refused, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


closed_port = pytest.fixture(bound_not_listening, name="closed_port")
other_closed_port = pytest.fixture(bound_not_listening, name="other_closed_port")


@pytest.fixture
def check(environ, taken_port, capsys):
    """check(endpoint, **settings): ``python proxy.py --check`` as main() in this process: (exit code, out, err)."""
    def run(endpoint, *argv, **settings):
        environ.update(AZURE_ENDPOINT=endpoint, PORT=str(taken_port), CONNECT_TIMEOUT="5", UPSTREAM_TIMEOUT="5")
        environ.update(settings)
        code, out, err = main_in_process(["--env-file", os.devnull, "--check"] + list(argv), capsys)
        assert "Traceback" not in out + err
        return code, out, err
    return run


def last_line(out):
    return out.rstrip("\n").splitlines()[-1]


def field(out, name):
    """The values of one field of the report (``status``, ``model``...), in order."""
    return [line.split(None, 1)[1] if " " in line.strip() else "" for line in out.splitlines()
            if line.startswith("  %s " % name) or line.startswith("%s " % name)]


# ---------------------------------------------------------------------------
# Success: what was tried, what came back, which APIs the endpoint speaks
# ---------------------------------------------------------------------------


def test_a_full_chat_url_is_asked_once_and_reported(chat_upstream, check):
    code, out, _ = check(chat_upstream.url + "/v1/chat/completions")
    assert code == 0, out
    assert "POST %s/v1/chat/completions\n" % chat_upstream.url in out
    assert field(out, "status") == ["200"]
    assert len(field(out, "first byte")) == 1 and field(out, "first byte")[0].endswith(" s")
    assert len(field(out, "total")) == 1
    assert field(out, "stream") == ["ended properly (a finish_reason, then data: [DONE])"]
    assert field(out, "model")[-1] == "gpt-fake"
    assert "Chat Completions (the URL names it)" in out and "UPSTREAM_API=auto is enough" in out
    assert last_line(out) == "check passed"
    [seen] = chat_upstream.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.json == check_request("chat", DEFAULT_MODEL)
    assert seen.json["stream"] is True and seen.json["max_tokens"] == MAX_TOKENS
    assert seen.json["messages"] == [{"role": "user", "content": "ping"}]


def test_a_full_responses_url_is_asked_in_the_responses_api(responses_upstream, check):
    code, out, _ = check(responses_upstream.url + "/v1/responses?api-version=preview")
    assert code == 0, out
    assert "POST %s/v1/responses\n" % responses_upstream.url in out  # no query: it could hold a key
    assert field(out, "stream") == ["ended properly (response.completed)"]
    assert "the Responses API (the URL names it)" in out and last_line(out) == "check passed"
    [seen] = responses_upstream.requests
    assert seen.query == "api-version=preview"
    assert seen.json == {"model": DEFAULT_MODEL, "input": "ping", "max_output_tokens": MAX_TOKENS, "stream": True,
                         "store": False}


def test_a_base_url_speaking_both_is_asked_in_both(upstream, check):
    code, out, _ = check(upstream.url + "/v1")
    assert code == 0, out
    assert [seen.path for seen in upstream.requests] == ["/v1/responses", "/v1/chat/completions"]
    assert field(out, "status") == ["200", "200"] and field(out, "model")[-2:] == ["gpt-fake", "gpt-fake"]
    assert field(out, "speaks") == ["both APIs; UPSTREAM_API=auto is right: each client's requests go as they are"]
    assert last_line(out) == "check passed"


def test_a_base_url_speaking_only_chat_says_to_set_upstream_api_chat(chat_upstream, check):
    code, out, _ = check(chat_upstream.url + "/v1")
    assert code == 0, out
    assert field(out, "status") == ["404: Invalid URL (POST /v1/responses)", "200"]
    [speaks] = field(out, "speaks")
    assert speaks.startswith("Chat Completions only; set UPSTREAM_API=chat"), speaks
    assert last_line(out) == "check passed"


def test_a_base_url_speaking_only_chat_with_upstream_api_chat_is_right(chat_upstream, check):
    code, out, _ = check(chat_upstream.url + "/v1", UPSTREAM_API="chat")
    assert code == 0 and field(out, "speaks") == ["Chat Completions only; UPSTREAM_API=chat is right"], out


def test_a_base_url_speaking_only_responses_says_so(responses_upstream, check):
    code, out, _ = check(responses_upstream.url + "/v1")
    assert code == 0, out
    assert field(out, "status") == ["200", "404: Invalid URL (POST /v1/chat/completions)"]
    [speaks] = field(out, "speaks")
    assert speaks.startswith("the Responses API only; Codex works as it is") and "UPSTREAM_API=responses" in speaks


def test_upstream_api_naming_the_api_the_endpoint_lacks_fails_with_the_value_to_set(chat_upstream, check):
    code, out, _ = check(chat_upstream.url + "/v1", UPSTREAM_API="responses")
    assert code == 1, out
    assert last_line(out) == ("check failed: the upstream speaks only Chat Completions, but UPSTREAM_API=responses "
                              "sends every request as the Responses API; set UPSTREAM_API=chat")


def test_forced_model_is_the_model_asked_for(upstream, check):
    code, out, _ = check(upstream.url + "/v1/responses", FORCED_MODEL="my-deployment")
    assert code == 0 and field(out, "model")[0] == "my-deployment (FORCED_MODEL)"
    assert upstream.requests[0].json["model"] == "my-deployment"


def test_without_forced_model_the_report_says_how_to_ask_for_another(upstream, check):
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 0
    assert field(out, "model")[0] == ("gpt-5 (FORCED_MODEL is not set; FORCED_MODEL=NAME python proxy.py --check "
                                      "asks for NAME)")


def test_a_chat_upstream_refusing_max_tokens_is_asked_again_without_as_the_proxy_would(chat_upstream, check):
    refusal = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                    "'max_completion_tokens' instead.", "type": "invalid_request_error",
                         "param": "max_tokens", "code": "unsupported_parameter"}}
    chat_upstream.plan(status(400, body=refusal), good())
    code, out, _ = check(chat_upstream.url + "/v1/chat/completions")
    assert code == 0, out
    assert field(out, "refused") == ["max_tokens, so asked again without (as the proxy does)"]
    second = chat_upstream.requests[1].json
    assert "max_tokens" not in second and second["max_completion_tokens"] == MAX_TOKENS


def test_an_incomplete_answer_ended_properly(upstream, check):
    upstream.plan(raw(responses_stream(terminal="response.incomplete", incomplete_reason="max_output_tokens")))
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 0, out
    assert field(out, "stream") == ["ended properly (response.incomplete: the check asks for few tokens)"]


def test_the_check_starts_no_server_and_keeps_the_start_up_warnings(upstream, check, caplog):
    """PORT is held by another socket (the fixture): a server would exit 2; the warnings of a start still come."""
    code, out, err = check(upstream.url + "/v1/responses", AZURE_API_KEY="k3y45")
    assert code == 0, out + err
    assert "AZURE_API_KEY is only 5 characters long" in caplog.text


def test_a_configuration_error_still_exits_2(check):
    code, out, err = check("ftp://nowhere/v1")
    assert code == 2 and out == "" and err.startswith("proxy.py: error: AZURE_ENDPOINT='ftp://nowhere/v1'")


def test_help_lists_check(environ, capsys):
    with pytest.raises(SystemExit):
        main_in_process(["--help"], capsys)
    assert "--check" in capsys.readouterr().out


def test_the_real_script_checks_and_exits_0(upstream, taken_port):
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(taken_port), AZURE_API_KEY=KEY)
    result = subprocess.run([sys.executable, proxy.__file__, "--env-file", os.devnull, "--check"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("check passed\n") and result.stderr == ""
    assert KEY not in result.stdout and upstream.requests[0].headers["api-key"] == KEY


def readme_examples():
    with open(os.path.join(os.path.dirname(os.path.abspath(proxy.__file__)), "README.md"), encoding="utf-8") as handle:
        section = handle.read().split("\n### --check\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n\$ python proxy.py --check\n(.*?)```", section, re.DOTALL)


def as_documented(out, port, fallback_port=8081):
    """The output as README shows it: the upstream on port 8080, a fallback on 8081, the times of that run."""
    for ours, documented in ((port, 8080), (fallback_port, 8081)):
        out = out.replace("127.0.0.1:%d" % ours, "127.0.0.1:%d" % documented).replace(
            "127.0.0.1 port %d" % ours, "127.0.0.1 port %d" % documented)
    return re.sub(r"\d+\.\d{3} s", "T s", out)


def test_the_readme_examples_are_what_the_check_prints(chat_upstream, closed_port, check):
    passed, failed, with_fallback = readme_examples()
    code, out, _ = check(chat_upstream.url + "/v1")
    assert code == 0 and as_documented(out, chat_upstream.port) == as_documented(passed, 8080)
    code, out, _ = check("http://127.0.0.1:%d/v1" % closed_port)
    assert code == 1 and as_documented(out, closed_port) == as_documented(failed, 8080)
    code, out, _ = check(chat_upstream.url + "/v1", FALLBACK_1_ENDPOINT="http://127.0.0.1:%d/v1" % closed_port)
    assert code == 1 and as_documented(out, chat_upstream.port, closed_port) == as_documented(with_fallback, 8080)


def test_ctrl_c_during_a_check_is_one_line_and_exit_130(upstream, taken_port):
    upstream.plan(stall(60.0))
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(taken_port))
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull, "--check"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not upstream.requests and time.monotonic() < deadline:  # the check is waiting for its answer
            time.sleep(0.02)
        assert upstream.requests, "the check never reached the upstream"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and err == "proxy.py: check interrupted\n" and out == ""


# ---------------------------------------------------------------------------
# Failure: one line naming the likely cause and the fix, exit 1
# ---------------------------------------------------------------------------


def test_connection_refused_names_the_host_and_port(closed_port, check):
    code, out, _ = check("http://127.0.0.1:%d/v1" % closed_port)
    assert code == 1, out
    assert last_line(out) == ("check failed: nothing listens on 127.0.0.1 port %d (connection refused); check the "
                              "host and port in AZURE_ENDPOINT, and that the upstream server is running" % closed_port)
    assert "/chat/completions not asked: the same host" in out  # the other API's path would fail the same way


def test_a_host_that_does_not_resolve_names_the_host(invalid_does_not_resolve, check):  # noqa: F811
    code, out, _ = check("https://%s/openai/v1" % UNRESOLVABLE)
    assert code == 1, out
    assert last_line(out) == ("check failed: cannot resolve %s; check the host name in AZURE_ENDPOINT (a typo, or a "
                              "resource that does not exist)" % UNRESOLVABLE)


@pytest.mark.parametrize("code_", [401, 403])
def test_refused_credentials_name_azure_api_key(upstream, check, code_):
    upstream.plan(status(code_))
    code, out, _ = check(upstream.url + "/v1/responses", AZURE_API_KEY=KEY)
    assert code == 1, out
    assert last_line(out).startswith("check failed: the upstream refused the credentials (HTTP %d: fake upstream "
                                     "error %d); check AZURE_API_KEY" % (code_, code_)), out


def test_refused_credentials_without_a_key_say_to_set_one(upstream, check):
    upstream.plan(status(401))
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 1 and "AZURE_API_KEY is empty, so no key was sent: set AZURE_API_KEY" in last_line(out), out
    assert "authorization" not in upstream.requests[0].headers and "api-key" not in upstream.requests[0].headers


def test_a_base_url_with_neither_path_names_the_path_to_fix(check):
    with FakeUpstream(speaks=()) as nowhere:
        code, out, _ = check(nowhere.url + "/api")
    assert code == 1, out
    assert last_line(out) == ("check failed: the upstream has neither /api/responses nor /api/chat/completions "
                              "(HTTP 404); check the path in AZURE_ENDPOINT: a base URL such as "
                              "https://NAME.openai.azure.com/openai/v1 or https://api.openai.com/v1")


def test_a_missing_azure_deployment_names_the_deployment(chat_upstream, check):
    chat_upstream.plan(status(404, body={"error": {"code": "DeploymentNotFound", "message": (
        "The API deployment for this resource does not exist. If you created the deployment within the last 5 "
        "minutes, please wait a moment and try again.")}}))
    code, out, _ = check(chat_upstream.url + "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21")
    assert code == 1, out
    assert last_line(out).startswith("check failed: Azure has no such deployment (HTTP 404: The API deployment for "
                                     "this resource does not exist."), out
    assert "check the deployment name in AZURE_ENDPOINT" in last_line(out)


def test_a_missing_model_says_how_to_ask_for_another(upstream, check):
    upstream.plan(status(404, body={"error": {"code": "model_not_found",
                                              "message": "The model `gpt-5` does not exist"}}))
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 1, out
    assert last_line(out).startswith("check failed: the upstream has no model gpt-5 (HTTP 404: The model `gpt-5` "
                                     "does not exist); check with a model it serves: FORCED_MODEL=NAME"), out


def test_a_refused_api_version_says_to_fix_it(chat_upstream, check):
    chat_upstream.plan(status(400, body={"error": {"code": "BadRequest", "message": "Unsupported api-version "
                                                   "2023-01-01. The supported api-versions are ..."}}))
    code, out, _ = check(chat_upstream.url + "/openai/deployments/gpt4o/chat/completions?api-version=2023-01-01")
    assert code == 1, out
    assert last_line(out).startswith("check failed: the upstream refused the API version (HTTP 400: Unsupported "
                                     "api-version 2023-01-01."), out
    assert "fix api-version in AZURE_ENDPOINT" in last_line(out)


@pytest.fixture
def tls_upstream():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(context)
    with FakeUpstream(tls=context) as fake:
        yield fake


def test_an_untrusted_certificate_names_ssl_cert_file(tls_upstream, check, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    code, out, _ = check(tls_upstream.url + "/v1")
    assert code == 1, out
    line = last_line(out)
    assert line.startswith("check failed: the upstream's TLS certificate is not trusted (") and "SSL_CERT_FILE" in line
    assert tls_upstream.requests == [] and "not asked" in out


def test_a_plain_http_server_behind_https_says_to_use_http(upstream, check):
    code, out, _ = check(upstream.url.replace("http://", "https://") + "/v1")
    assert code == 1 and "use http:// in AZURE_ENDPOINT" in last_line(out), out


@pytest.mark.parametrize("outcome, shown", [
    (cut(300), "did not end properly (stream cut after 300 bytes (IncompleteRead))"),
    (no_terminator(), "did not end properly (stream ended without response.completed"),
])
def test_a_stream_that_did_not_end_properly_fails(upstream, check, outcome, shown):
    upstream.plan(outcome)
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 1, out
    assert field(out, "stream")[0].startswith(shown), out
    assert last_line(out).startswith("check failed: the stream did not end properly (")
    assert "something in between" in last_line(out)


def test_a_connection_closed_without_an_answer_names_the_scheme_and_port(upstream, check):
    upstream.plan(reset())
    code, out, _ = check(upstream.url + "/v1/responses")
    assert code == 1, out
    assert last_line(out).startswith("check failed: 127.0.0.1 port %d closed the connection without an answer ("
                                     % upstream.port), out


def test_a_server_error_says_the_upstream_is_failing(upstream, check):
    upstream.plan(status(503))
    code, out, _ = check(upstream.url + "/v1/chat/completions")
    assert code == 1 and last_line(out).startswith("check failed: the upstream failed (HTTP 503: "), out
    assert len(upstream.requests) == 1  # one request, not the proxy's retries


def test_no_key_is_ever_printed(upstream, check, capsys):
    """The key goes upstream in the headers and sits in the endpoint's query; the upstream even echoes it."""
    upstream.plan(status(401, body={"error": {"message": "Incorrect API key provided: %s." % KEY}}))
    code, out, err = check(upstream.url + "/v1/responses?api-version=2024-10-21&api-key=" + KEY, "--debug",
                           AZURE_API_KEY=KEY, PROXY_API_KEY=KEY[::-1])
    assert code == 1
    seen = upstream.requests[0]
    assert seen.headers["api-key"] == KEY and seen.headers["authorization"] == "Bearer " + KEY
    assert KEY in seen.query
    assert KEY not in out + err and KEY[::-1] not in out + err
    assert "Incorrect API key provided: ***." in out


# ---------------------------------------------------------------------------
# Fallbacks: each endpoint asked with its own URL, key, model and API, its own section
# ---------------------------------------------------------------------------

PRIMARY_KEY = "sk-primary-check-4c1f9e7a2b"
FALLBACK_KEY = "sk-fallback-one-8d2e6b0c5f"
SECOND_KEY = "sk-fallback-two-3a7d1e9b4c"


def sections(out):
    """The report's sections by heading (the lines up to the next blank line before a heading)."""
    found, name = {}, None
    for line in out.splitlines():
        if line.startswith("primary (") or re.match(r"FALLBACK_\d+$", line):
            name = line
            found[name] = []
        elif name is not None:
            found[name].append(line)
    return found


def test_a_dead_fallback_fails_the_check_naming_it_and_its_setting(chat_upstream, closed_port, check):
    code, out, _ = check(chat_upstream.url + "/v1/chat/completions",
                         FALLBACK_1_ENDPOINT="http://127.0.0.1:%d/v1" % closed_port)
    assert code == 1, out
    assert list(sections(out)) == ["primary (AZURE_ENDPOINT)", "FALLBACK_1"]
    assert field(out, "result") == [
        "works", "fails: nothing listens on 127.0.0.1 port %d (connection refused); check the host and port in "
                 "FALLBACK_1_ENDPOINT, and that the upstream server is running" % closed_port]
    assert last_line(out) == "check failed: FALLBACK_1 does not work; its result line above says why and what to fix"
    assert len(chat_upstream.requests) == 1  # the primary once; the fallback's host is not the primary's


def test_every_endpoint_that_fails_is_named_and_a_working_set_passes(upstream, make_upstream, closed_port,
                                                                     other_closed_port, check):
    code, out, _ = check("http://127.0.0.1:%d/v1" % closed_port, FALLBACK_1_ENDPOINT=upstream.url + "/v1",
                         FALLBACK_2_ENDPOINT="http://127.0.0.1:%d/v1" % other_closed_port)
    assert code == 1, out
    assert field(out, "result")[1] == "works" and "check the host and port in AZURE_ENDPOINT" in out
    assert last_line(out) == ("check failed: the primary and FALLBACK_2 do not work; each one's result line above "
                              "says why and what to fix")
    code, out, _ = check(upstream.url + "/v1", FALLBACK_1_ENDPOINT=make_upstream().url + "/v1", FALLBACK_2_ENDPOINT="")
    assert code == 0 and field(out, "result") == ["works", "works"], out
    assert last_line(out) == "check passed: the primary and FALLBACK_1 work"


def test_refused_credentials_on_a_fallback_name_its_key(upstream, make_upstream, check):
    fallback = make_upstream()
    fallback.plan(status(401))
    code, out, _ = check(upstream.url + "/v1/responses", AZURE_API_KEY=PRIMARY_KEY,
                         FALLBACK_1_ENDPOINT=fallback.url + "/v1/responses", FALLBACK_1_API_KEY=FALLBACK_KEY)
    assert code == 1, out
    [_, result] = field(out, "result")
    assert result.startswith("fails: the upstream refused the credentials (HTTP 401: fake upstream error 401); "
                             "check FALLBACK_1_API_KEY: the key of this endpoint's resource"), result
    assert "AZURE_API_KEY" not in result
    assert field(out, "key") == ["AZURE_API_KEY is set", "FALLBACK_1_API_KEY is set"]
    assert upstream.requests[0].headers["api-key"] == PRIMARY_KEY
    assert fallback.requests[0].headers["api-key"] == FALLBACK_KEY  # each endpoint its own key, never another's


def test_a_fallback_without_a_key_is_said_to_send_none(upstream, make_upstream, check):
    fallback = make_upstream()
    fallback.plan(status(403))
    code, out, _ = check(upstream.url + "/v1/responses", AZURE_API_KEY=PRIMARY_KEY,
                         FALLBACK_1_ENDPOINT=fallback.url + "/v1/responses")
    assert code == 1, out
    assert field(out, "key")[1] == "FALLBACK_1_API_KEY is empty: the check sends no key (the proxy passes the " \
                                   "client's own)"
    assert field(out, "result")[1].endswith("FALLBACK_1_API_KEY is empty, so no key was sent: set FALLBACK_1_API_KEY "
                                            "to the upstream's key")
    assert "api-key" not in fallback.requests[0].headers and "authorization" not in fallback.requests[0].headers


def test_a_chat_only_fallback_base_url_names_its_upstream_api(upstream, make_upstream, check):
    fallback = make_upstream(speaks=("chat",))
    code, out, _ = check(upstream.url + "/v1", FALLBACK_1_ENDPOINT=fallback.url + "/v1")
    assert code == 0, out
    assert field(out, "endpoint")[1] == "%s/v1 (a base URL, FALLBACK_1_UPSTREAM_API=auto)" % fallback.url
    speaks = field(out, "speaks")
    assert speaks[0].startswith("both APIs; UPSTREAM_API=auto is right"), speaks
    assert speaks[1].startswith("Chat Completions only; set FALLBACK_1_UPSTREAM_API=chat, so that Codex's Responses "
                                "requests are translated"), speaks
    code, out, _ = check(upstream.url + "/v1", FALLBACK_1_ENDPOINT=fallback.url + "/v1",
                         FALLBACK_1_UPSTREAM_API="responses")
    assert code == 1, out
    assert field(out, "result")[1] == ("fails: the upstream speaks only Chat Completions, but "
                                       "FALLBACK_1_UPSTREAM_API=responses sends every request as the Responses API; "
                                       "set FALLBACK_1_UPSTREAM_API=chat")


def test_each_endpoint_is_asked_for_its_own_model(upstream, make_upstream, check):
    first, second = make_upstream(), make_upstream()
    code, out, _ = check(upstream.url + "/v1/responses", FORCED_MODEL="dep-primary",
                         FALLBACK_1_ENDPOINT=first.url + "/v1/chat/completions", FALLBACK_1_MODEL="dep-west",
                         FALLBACK_2_ENDPOINT=second.url + "/v1/responses")
    assert code == 0, out
    assert [fake.requests[0].json["model"] for fake in (upstream, first, second)] == [
        "dep-primary", "dep-west", "dep-primary"]
    assert first.requests[0].json == check_request("chat", "dep-west")
    assert field(out, "model")[0::2] == ["dep-primary (FORCED_MODEL)", "dep-west (FALLBACK_1_MODEL)",
                                         "dep-primary (FALLBACK_2_MODEL, else FORCED_MODEL)"]


def test_a_fallback_without_any_model_setting_is_asked_for_the_default(upstream, make_upstream, check):
    fallback = make_upstream()
    code, out, _ = check(upstream.url + "/v1/responses", FALLBACK_1_ENDPOINT=fallback.url + "/v1/responses")
    assert code == 0 and fallback.requests[0].json["model"] == DEFAULT_MODEL, out
    assert field(out, "model")[2] == ("gpt-5 (neither FALLBACK_1_MODEL nor FORCED_MODEL is set; FALLBACK_1_MODEL=NAME "
                                      "python proxy.py --check asks for NAME)")


def test_a_missing_model_on_a_fallback_says_to_set_its_model(upstream, make_upstream, check):
    fallback = make_upstream()
    fallback.plan(status(404, body={"error": {"code": "model_not_found", "message": "The model `gpt-5` does not "
                                                                                    "exist"}}))
    code, out, _ = check(upstream.url + "/v1/responses", FALLBACK_1_ENDPOINT=fallback.url + "/v1/responses")
    assert code == 1, out
    assert "check with a model it serves: FALLBACK_1_MODEL=NAME python proxy.py --check (on Azure NAME is a " \
           "deployment's name), then set FALLBACK_1_MODEL" in field(out, "result")[1]


def test_no_fallback_key_is_ever_printed(upstream, make_upstream, check):
    """Each fallback's key goes upstream in the headers and sits in its endpoint's query; the upstream echoes it."""
    first, second = make_upstream(), make_upstream()
    for fake, key in ((first, FALLBACK_KEY), (second, SECOND_KEY)):
        fake.plan(status(401, body={"error": {"message": "Incorrect API key provided: %s." % key}}))
    code, out, err = check(upstream.url + "/v1/responses", "--debug", AZURE_API_KEY=PRIMARY_KEY,
                           FALLBACK_1_ENDPOINT=first.url + "/v1/responses?api-key=" + FALLBACK_KEY,
                           FALLBACK_1_API_KEY=FALLBACK_KEY,
                           FALLBACK_2_ENDPOINT=second.url + "/v1?api-version=1&api-key=" + SECOND_KEY,
                           FALLBACK_2_API_KEY=SECOND_KEY)
    assert code == 1
    assert FALLBACK_KEY in first.requests[0].query and SECOND_KEY in second.requests[0].query
    assert first.requests[0].headers["api-key"] == FALLBACK_KEY and second.requests[0].headers["api-key"] == SECOND_KEY
    for key in (PRIMARY_KEY, FALLBACK_KEY, SECOND_KEY):
        assert key not in out + err
    assert "Incorrect API key provided: ***." in out
    assert out.count("fails: the upstream refused the credentials") == 2


# ---------------------------------------------------------------------------
# USAGE_LOG: opened as a start opens it
# ---------------------------------------------------------------------------


def test_a_usage_log_that_cannot_be_opened_exits_2_with_one_line(upstream, check, tmp_path):
    path = tmp_path / "no-such-folder" / "usage.jsonl"
    code, out, err = check(upstream.url + "/v1", USAGE_LOG=str(path))
    assert_one_line_error(code, err, "cannot open the usage log USAGE_LOG=%s: No such file or directory" % path,
                          "set USAGE_LOG to a file you can write")
    assert out == "" and upstream.requests == []  # as a start would: nothing is asked


def test_a_usage_log_that_opens_is_not_written(upstream, check, tmp_path):
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b'{"earlier":1}\n')
    code, out, _ = check(upstream.url + "/v1", USAGE_LOG=str(path))
    assert code == 0 and last_line(out) == "check passed", out
    assert path.read_bytes() == b'{"earlier":1}\n'


# ---------------------------------------------------------------------------
# The diagnosis, as data
# ---------------------------------------------------------------------------

ENDPOINT = "https://res.openai.azure.com/openai/v1"
GOOD = StreamVerdict(StreamVerdict.COMPLETE, "completed")


def probe(protocol="responses", **fields):
    url = ENDPOINT + ("/responses" if protocol == "responses" else "/chat/completions")
    return Probe(protocol, url, 0.5, **fields)


NO_PATH = {"status": 404, "message": "Invalid URL (POST /v1/responses)"}


@pytest.mark.parametrize("found, expected", [
    (probe(kind="dns", detail="cannot resolve res.openai.azure.com; check AZURE_ENDPOINT"),
     "cannot resolve res.openai.azure.com; check the host name in AZURE_ENDPOINT"),
    (probe(kind="connect", detail="cannot connect: Connection refused"),
     "nothing listens on res.openai.azure.com port 443 (connection refused); check the host and port"),
    (probe(kind="connect", detail="cannot connect: Network is unreachable"),
     "cannot connect to res.openai.azure.com port 443 (Network is unreachable); check the host and port"),
    (probe(kind="connect", detail="TLS handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE"),
     "TLS handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE with res.openai.azure.com port 443; check the host"),
    (probe(kind="timeout", detail="connect timed out after 10.0s"),
     "res.openai.azure.com port 443 did not answer in time (connect timed out after 10.0s); check the host"),
    (probe(kind="tls", detail="the upstream's TLS certificate is not trusted (x); check AZURE_ENDPOINT, or set "
                              "SSL_CERT_FILE to your CA bundle"), "the upstream's TLS certificate is not trusted"),
    (probe(status=401, message="Access denied due to invalid subscription key."),
     "the upstream refused the credentials (HTTP 401: Access denied due to invalid subscription key.); check "
     "AZURE_API_KEY"),
    (probe(status=403, message="Public access is disabled."), "the resource's network rules"),
    (probe(**NO_PATH), "the upstream has no /openai/v1/responses (HTTP 404: Invalid URL (POST /v1/responses)); "
                       "check the path in AZURE_ENDPOINT"),
    (probe(status=404, message="The model `gpt-5` does not exist"), "the upstream has no model gpt-5"),
    (probe(status=400, message="API version not supported"), "the upstream refused the API version"),
    (probe(status=400, message="Invalid value for 'input'."), "the upstream refused the check's request (HTTP 400"),
    (probe(status=429, message="Rate limit reached", kind="status"), "the upstream is limiting requests"),
    (probe(status=500, message="oops", kind="status"), "the upstream failed (HTTP 500: oops)"),
    (probe(status=200), "the upstream answered with JSON, not a stream"),
    (probe(status=200, kind="cut", detail="stream cut after 41 KB (IncompleteRead)"),
     "the stream did not end properly (stream cut after 41 KB (IncompleteRead)); the upstream or something in"),
    (probe(kind="unterminated", detail="stream ended without response.completed (3 KB)"),
     "the stream did not end properly (stream ended without response.completed (3 KB))"),
    (probe(kind="stream_error", detail="error event: server_error: boom"),
     "the upstream sent an error instead of an answer (error event: server_error: boom)"),
    (probe(status=200, verdict=StreamVerdict(StreamVerdict.FAILED, "response.failed: insufficient_quota: no",
                                             error={"code": "insufficient_quota", "message": "no"})),
     "the upstream ended the answer with an error (insufficient_quota: no)"),
    (probe(status=200, verdict=StreamVerdict(StreamVerdict.FAILED, "x", error={"code": "model_not_found",
                                                                               "message": "no such model"})),
     "the upstream has no model gpt-5 (model_not_found: no such model)"),
    (probe(kind="wrong_api", detail="the upstream answered ...; set UPSTREAM_API=chat"), "set UPSTREAM_API=chat"),
    (probe(kind="reset", detail="connection lost before the answer: Connection reset by peer"),
     "res.openai.azure.com port 443 closed the connection without an answer (connection lost before the answer: "
     "Connection reset by peer); check the scheme and port in AZURE_ENDPOINT"),
])
def test_each_failure_has_one_line_naming_its_cause_and_fix(found, expected):
    line = cause(found, Endpoint(0, ENDPOINT, "a-key-of-some-length"), "gpt-5")
    assert line.startswith(expected) or expected in line, line
    assert "\n" not in line and "; " in line


def test_an_empty_key_is_named_when_the_credentials_are_refused():
    line = cause(probe(status=401), Endpoint(0, ENDPOINT), "gpt-5")
    assert line.endswith("AZURE_API_KEY is empty, so no key was sent: set AZURE_API_KEY to the upstream's key")


def test_a_404_on_a_url_with_an_api_version_mentions_it():
    line = cause(probe(status=404, message="Resource not found"),
                 Endpoint(0, ENDPOINT + "/x/chat/completions?api-version=1", "k"), "m")
    assert "check the path (or its api-version) in AZURE_ENDPOINT" in line


CHAT_OK = probe("chat", status=200, verdict=GOOD)
RESPONSES_OK = probe(status=200, verdict=GOOD)
CHAT_NO_PATH = probe("chat", status=404, message="Not Found")
RESPONSES_NO_PATH = probe(**NO_PATH)
CHAT_400 = probe("chat", status=400, message="The model does not support chat")


@pytest.mark.parametrize("endpoint, upstream_api, probes, ok, expected", [
    (ENDPOINT, "auto", [RESPONSES_OK, CHAT_OK], True, "both APIs; UPSTREAM_API=auto is right"),
    (ENDPOINT, "chat", [RESPONSES_OK, CHAT_OK], True, "both APIs; UPSTREAM_API=chat works, and UPSTREAM_API=auto"),
    (ENDPOINT, "auto", [RESPONSES_NO_PATH, CHAT_OK], True, "Chat Completions only; set UPSTREAM_API=chat"),
    (ENDPOINT, "chat", [RESPONSES_NO_PATH, CHAT_OK], True, "Chat Completions only; UPSTREAM_API=chat is right"),
    (ENDPOINT, "responses", [RESPONSES_NO_PATH, CHAT_OK], False,
     "the upstream speaks only Chat Completions, but UPSTREAM_API=responses sends every request as the Responses "
     "API; set UPSTREAM_API=chat"),
    (ENDPOINT, "auto", [RESPONSES_OK, CHAT_NO_PATH], True, "the Responses API only; Codex works as it is"),
    (ENDPOINT, "responses", [RESPONSES_OK, CHAT_NO_PATH], True, "the Responses API only; UPSTREAM_API=responses"),
    (ENDPOINT, "chat", [RESPONSES_OK, CHAT_NO_PATH], False, "the upstream speaks only the Responses API, but "
     "UPSTREAM_API=chat sends every request as Chat Completions; set UPSTREAM_API=responses"),
    (ENDPOINT, "auto", [RESPONSES_OK, CHAT_400], True, "the Responses API; Chat Completions did not answer properly"),
    (ENDPOINT, "chat", [RESPONSES_OK, CHAT_400], False, None),  # the chat probe's own cause says why
    (ENDPOINT, "auto", [RESPONSES_NO_PATH, CHAT_NO_PATH], False, None),
    (ENDPOINT + "/chat/completions", "auto", [CHAT_OK], True, "Chat Completions (the URL names it); Responses (Codex) "
                                                              "requests are translated to it"),
    (ENDPOINT + "/responses", "auto", [RESPONSES_OK], True, "the Responses API (the URL names it); Chat Completions"),
    (ENDPOINT + "/responses", "auto", [RESPONSES_NO_PATH], False, None),
])
def test_the_apis_an_endpoint_speaks_and_the_upstream_api_to_set(endpoint, upstream_api, probes, ok, expected):
    said_ok, line = api_advice(Endpoint(0, endpoint, upstream_api=upstream_api), probes)
    assert said_ok is ok
    if expected is None:
        assert line is None
    else:
        assert line.startswith(expected), line


def test_a_base_url_is_asked_in_both_apis_a_full_url_in_its_own():
    assert probe_urls("http://h/v1?api-version=x") == [("responses", "http://h/v1/responses?api-version=x"),
                                                      ("chat", "http://h/v1/chat/completions?api-version=x")]
    assert probe_urls("http://h/d/chat/completions") == [("chat", "http://h/d/chat/completions")]
    assert probe_urls("http://h/v1/responses/") == [("responses", "http://h/v1/responses")]


def test_the_model_reported_is_found_past_a_chunk_that_names_none():
    azure_first = b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}\n\n'
    assert reported_model(azure_first + chat_stream()) == "gpt-fake"
    assert reported_model(memoryview(responses_stream())) == "gpt-fake"
    assert reported_model(b"data: [DONE]\n\n") == ""


def test_only_a_stream_that_ended_with_an_answer_works():
    assert works(RESPONSES_OK)
    assert works(probe(status=200, verdict=StreamVerdict(StreamVerdict.INCOMPLETE, "incomplete")))
    assert not works(probe(status=200, verdict=StreamVerdict(StreamVerdict.FAILED, "x", error={})))
    assert not works(probe(status=200)) and not works(CHAT_NO_PATH)


def test_the_minimal_requests():
    assert json.loads(json.dumps(check_request("chat", "m")))["stream_options"] == {"include_usage": True}
    assert check_request("responses", "m")["max_output_tokens"] == MAX_TOKENS >= 16

"""Who may use the key: loopback binding, PROXY_API_KEY, Origin and Host guards, CORS, no key leaks."""

import json
import os
import subprocess
import sys

import pytest

import proxy
from retry_shield.config import load_config
from retry_shield.errors import ConfigError
from tests.helpers import free_port, request, wait_for_health

SECRET = "sk-upstream-SECRET-0123456789"
PROXY_SECRET = "proxy-SECRET-abcdef"


def error_code(body):
    return json.loads(body)["error"]["code"]


def test_non_loopback_host_without_proxy_key_refuses_to_start():
    with pytest.raises(ConfigError, match="PROXY_API_KEY"):
        load_config([], {"AZURE_ENDPOINT": "http://127.0.0.1:1/v1", "HOST": "0.0.0.0"})
    config = load_config([], {"AZURE_ENDPOINT": "http://127.0.0.1:1/v1", "HOST": "0.0.0.0",
                                    "PROXY_API_KEY": PROXY_SECRET})
    assert config.host == "0.0.0.0"


def test_non_loopback_host_start_up_error_is_one_line(tmp_path):
    env = dict(os.environ, AZURE_ENDPOINT="http://127.0.0.1:1/v1", HOST="0.0.0.0", PORT="0")
    env.pop("PROXY_API_KEY", None)
    result = subprocess.run([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "PROXY_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_loopback_host_warns_and_demands_the_proxy_key(upstream):
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", HOST="0.0.0.0", PORT=str(port),
               PROXY_API_KEY=PROXY_SECRET)
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port)
        assert request(port)[0] == 401
        assert request(port, headers={"Authorization": "Bearer " + PROXY_SECRET})[0] == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "WARNING" in err and "other machines can reach this proxy" in err and PROXY_SECRET not in err


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}])
def test_proxy_key_required_when_set(upstream, make_proxy, headers):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_SECRET)
    status, _, body = request(shield.port, headers=headers)
    assert status == 401 and error_code(body) == "invalid_proxy_key"
    assert upstream.attempts == 0


@pytest.mark.parametrize("header", ["Authorization", "api-key"])
def test_proxy_key_accepted_and_never_forwarded(upstream, make_proxy, header):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_SECRET, AZURE_API_KEY=SECRET)
    value = "Bearer " + PROXY_SECRET if header == "Authorization" else PROXY_SECRET
    status, _, _ = request(shield.port, headers={header: value})
    assert status == 200
    assert upstream.attempts == 1
    sent = upstream.requests[-1].headers
    assert sent["api-key"] == SECRET and sent["authorization"] == "Bearer " + SECRET
    assert PROXY_SECRET not in json.dumps(sent)


def test_health_needs_no_proxy_key(upstream, make_proxy):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_SECRET)
    status, _, body = request(shield.port, "GET", "/health", body=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_foreign_origin_is_refused_and_not_forwarded(upstream, make_proxy):
    shield = make_proxy(upstream)
    status, headers, body = request(shield.port, headers={"Origin": "https://evil.example"})
    assert status == 403 and error_code(body) == "origin_not_allowed"
    assert "access-control-allow-origin" not in headers
    assert upstream.attempts == 0


def test_allowed_origin_gets_cors_headers_and_preflight(upstream, make_proxy):
    origin = "http://localhost:3000"
    shield = make_proxy(upstream, ALLOWED_ORIGINS=origin + ", https://app.example")
    status, headers, _ = request(shield.port, headers={"Origin": origin})
    assert status == 200 and headers["access-control-allow-origin"] == origin
    status, headers, _ = request(shield.port, "OPTIONS", body=None, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204
    assert headers["access-control-allow-origin"] == origin
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    status, headers, _ = request(shield.port, "OPTIONS", body=None, headers={"Origin": "https://evil.example"})
    assert status == 403 and "access-control-allow-origin" not in headers
    assert upstream.attempts == 1


def test_no_cors_headers_without_origin(upstream, make_proxy):
    shield = make_proxy(upstream, ALLOWED_ORIGINS="http://localhost:3000")
    status, headers, _ = request(shield.port)
    assert status == 200 and not any(name.startswith("access-control") for name in headers)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8888", "192.168.1.20", "[::2]:80", "bad host:x"])
def test_rebound_host_names_are_refused(upstream, make_proxy, host):
    shield = make_proxy(upstream)
    status, _, body = request(shield.port, host=host)
    assert status == 403 and error_code(body) == "host_not_allowed"
    status, _, _ = request(shield.port, "GET", "/health", body=None, host=host)
    assert status == 403
    assert upstream.attempts == 0


@pytest.mark.parametrize("host", ["localhost", "localhost:8888", "127.0.0.1", "127.0.0.2:1", "[::1]:8888"])
def test_loopback_host_names_are_served(upstream, make_proxy, host):
    shield = make_proxy(upstream)
    status, _, _ = request(shield.port, host=host)
    assert status == 200


def test_bad_allowed_origins_setting_is_a_start_up_error():
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        load_config([], {"AZURE_ENDPOINT": "http://127.0.0.1:1/v1", "ALLOWED_ORIGINS": "localhost:3000"})


def test_keys_never_leak_into_logs_errors_or_health(upstream, tmp_path):
    """Run proxy.py --debug for real; grep its whole log and every answer for both keys."""
    from tests.fake_upstream import error_event, good, status
    echo = {"error": {"message": "bad key " + SECRET + " " + PROXY_SECRET, "code": "server_error"}}
    upstream.plan(status(500, body=echo), error_event(message="key " + SECRET, code="server_error"),
                  status(401, body=echo), good())
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", AZURE_API_KEY=SECRET, PROXY_API_KEY=PROXY_SECRET,
               PORT=str(free_port()), MAX_RETRIES="1", RETRY_BASE_DELAY="0.01", RETRY_MAX_DELAY="0.01")
    log = tmp_path / "proxy.log"
    with open(str(log), "wb") as sink:
        process = subprocess.Popen([sys.executable, proxy.__file__, "--debug", "--env-file", os.devnull],
                                   env=env, stderr=sink)
        try:
            port = int(env["PORT"])
            wait_for_health(port)
            auth = {"Authorization": "Bearer " + PROXY_SECRET}
            texts = [request(port, headers=auth),  # 500, then an error event: gives up with 502
                     request(port, headers=auth),  # 401 passed through
                     request(port, headers={"api-key": "wrong " + SECRET}),
                     request(port, "GET", "/health", body=None),
                     request(port, "GET", "/v1/models", body=None, headers=auth)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert [text[0] for text in texts] == [502, 401, 401, 200, 200]
    logged = log.read_text()
    assert "attempt 1/2 failed" in logged and "DEBUG" in logged  # the log is the real, verbose one
    everything = logged + "".join(repr(text) for text in texts)
    assert SECRET not in everything and PROXY_SECRET not in everything


# -- keys masked as whole values ---------------------------------------------------

LONG_KEY = "sk-test-0123456789"


def filtered_logger(secrets, name):
    """A real logger whose one handler masks ``secrets`` and writes to a StringIO."""
    import io
    import logging

    from retry_shield.main import SecretFilter
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretFilter(tuple(secrets)))
    logger = logging.getLogger("tests.test_security." + name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, sink


def logged_lines(secrets, name, *calls):
    logger, sink = filtered_logger(secrets, name)
    for args in calls:
        logger.info(*args)
    return sink.getvalue().splitlines()


def test_a_short_key_is_masked_only_as_a_whole_value():
    lines = logged_lines(["k"], "short", ("backoff took %d tokens; key %s", 2, "k"),
                         ("backoff took 2 tokens; key k",), ("k",), ("k=k, 'k' [k]",))
    assert lines == ["backoff took 2 tokens; key ***", "backoff took 2 tokens; key ***", "***",
                     "***=***, '***' [***]"]


def test_a_long_key_is_masked_in_headers_and_json():
    echoed = json.dumps({"error": {"message": "Incorrect API key provided: " + LONG_KEY}, "key": LONG_KEY})
    lines = logged_lines([LONG_KEY], "long", ("sent Authorization: Bearer %s", LONG_KEY),
                         ("upstream said %s", echoed), ("api-key=%s;", LONG_KEY))
    assert lines[0] == "sent Authorization: Bearer ***"
    assert json.loads(lines[1][len("upstream said "):]) == {
        "error": {"message": "Incorrect API key provided: ***"}, "key": "***"}
    assert lines[2] == "api-key=***;"
    assert LONG_KEY not in "".join(lines)


def test_a_long_key_is_masked_even_glued_to_other_text():
    lines = logged_lines([LONG_KEY], "glued", ("api-key%%3D%s", LONG_KEY), ("caf\\u00e9%s9", LONG_KEY))
    assert lines == ["api-key%3D***", "caf\\u00e9***9"]


def test_a_key_inside_a_longer_key_does_not_unmask_part_of_it():
    # Both keys set, one a prefix of the other: the longer is masked whole, not as "***-0123456789".
    lines = logged_lines(["sk-test", LONG_KEY], "nested", ("Bearer %s and Bearer %s", LONG_KEY, "sk-test"))
    assert lines == ["Bearer *** and Bearer ***"]


@pytest.mark.parametrize("settings, warned", [
    ({}, []),
    ({"AZURE_API_KEY": "k"}, ["AZURE_API_KEY"]),
    ({"AZURE_API_KEY": "1234567"}, ["AZURE_API_KEY"]),
    ({"AZURE_API_KEY": "12345678"}, []),
    ({"AZURE_API_KEY": SECRET}, []),
    ({"PROXY_API_KEY": "Zq7x"}, ["PROXY_API_KEY"]),
    ({"PROXY_API_KEY": PROXY_SECRET}, []),
    ({"AZURE_API_KEY": "abc", "PROXY_API_KEY": "xyz"}, ["AZURE_API_KEY", "PROXY_API_KEY"]),
])
def test_short_keys_are_warned_about(settings, warned):
    from retry_shield.config import config_warnings
    warnings = config_warnings(load_config([], dict(settings, AZURE_ENDPOINT="http://127.0.0.1:1/v1")))
    assert [warning.split(" ", 1)[0] for warning in warnings] == warned
    for warning, name in zip(warnings, warned):
        assert "is only %d characters long" % len(settings[name]) in warning


def test_a_short_key_warns_once_at_start_up_and_the_proxy_still_serves(upstream):
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", AZURE_API_KEY="k", HOST="127.0.0.1",
               PORT=str(port))
    env.pop("PROXY_API_KEY", None)
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port)
        assert request(port)[0] == 200
        assert upstream.requests[-1].headers["api-key"] == "k"
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if "AZURE_API_KEY is only 1 characters long" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], err
    assert "PROXY_API_KEY" not in err and "Traceback" not in err


@pytest.mark.parametrize("key, echo, masked", [
    (SECRET, "Incorrect API key provided: " + SECRET + ".", "Incorrect API key provided: ***."),
    ("k", "bad key k", "bad key ***"),
])
def test_an_upstream_error_echoing_the_key_reaches_the_client_masked(upstream, make_proxy, key, echo, masked):
    from tests.fake_upstream import status
    upstream.plan(status(401, body={"error": {"message": echo, "type": "invalid_request_error",
                                              "code": "invalid_api_key"}}))
    shield = make_proxy(upstream, AZURE_API_KEY=key)
    status_code, _, body = request(shield.port)
    assert status_code == 401
    assert json.loads(body)["error"] == {"message": masked, "type": "invalid_request_error",
                                         "code": "invalid_api_key"}
    assert upstream.attempts == 1

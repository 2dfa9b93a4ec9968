"""The mistakes of a first run answered at once and clearly: a host that does not resolve, refused credentials.

Real proxies on 127.0.0.1:0 against the scripted fake upstream, or against a name under
``.invalid``, which never resolves (RFC 6761): resolution fails locally, with no network.
"""

import json
import logging
import socket
import threading
import time
from dataclasses import replace

import pytest

from retry_shield.config import load_config
from retry_shield.prepare import Outbound
from retry_shield.shield import FINAL, GAVE_UP, AttemptRecord, Exchange, credentials_warning
from tests.conftest import FAST_SETTINGS, RunningProxy
from tests.fake_upstream import good, status
from tests.helpers import post

UNRESOLVABLE = "nonexistent.invalid"


@pytest.fixture(scope="module")
def invalid_does_not_resolve():
    """Skip, saying why, where the resolver answers for .invalid or hangs (bounded: 10 s)."""
    outcome = {}

    def resolve():
        try:
            socket.getaddrinfo(UNRESOLVABLE, 9)
            outcome["result"] = "resolved"
        except socket.gaierror as exc:
            outcome["result"] = exc.errno
    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(10.0)
    if "result" not in outcome:
        pytest.skip("this machine's resolver hangs on %s" % UNRESOLVABLE)
    if outcome["result"] == "resolved":
        pytest.skip("this machine's resolver answers for %s" % UNRESOLVABLE)
    if outcome["result"] == socket.EAI_AGAIN:
        pytest.skip("this machine's resolver is unreachable (a temporary failure, retried as usual)")


@pytest.fixture
def proxies():
    running = []

    def make(**settings):
        environ = dict(FAST_SETTINGS, **settings)
        running.append(RunningProxy(load_config([], environ)))
        return running[-1]
    yield make
    for proxy in running:
        proxy.stop()


def test_a_host_that_does_not_resolve_is_named_after_three_attempts_at_most(invalid_does_not_resolve, proxies,
                                                                            caplog):
    shield = proxies(AZURE_ENDPOINT="http://%s:9/v1" % UNRESOLVABLE, MAX_RETRIES="8")
    began = time.monotonic()
    with caplog.at_level(logging.WARNING):
        code, _, body = post(shield.port, timeout=60)
    error = json.loads(body)["error"]
    assert code == 502, body
    assert error["code"] == "dns" and error["attempts"] <= 3
    assert "cannot resolve %s; check AZURE_ENDPOINT" % UNRESOLVABLE in error["message"]
    assert time.monotonic() - began < 30
    failed = [record.getMessage() for record in caplog.records if "failed:" in record.getMessage()]
    assert len(failed) == error["attempts"]
    assert failed[-1].startswith("attempt %d/3 failed: cannot resolve" % error["attempts"])
    assert failed[-1].endswith("giving up")


# ---------------------------------------------------------------------------
# The upstream refuses the credentials: one WARNING line naming the setting, never a key
# ---------------------------------------------------------------------------

OUTBOUND = Outbound(operation="/responses", client_protocol="responses", upstream_protocol="responses",
                    url="http://127.0.0.1:9/v1/responses", body=b"{}", headers={}, model_asked="m",
                    model_sent="m", wants_stream=True)


def exchange_of(*attempts, outcome=FINAL):
    records = tuple(AttemptRecord(number, kind, code, "", 0.1) for number, (kind, code) in enumerate(attempts, 1))
    return replace(Exchange.of("POST", "/v1/responses", OUTBOUND, 0.0), attempts=records, outcome=outcome)


def settings(**values):
    return load_config([], dict({"AZURE_ENDPOINT": "http://127.0.0.1:9/v1"}, **values))


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_name_the_setting(code):
    exchange = exchange_of(("status", 503), ("ok", code))
    message = credentials_warning(exchange, settings(AZURE_API_KEY="sk-upstream-secret"))
    assert message == "the upstream refused the credentials (HTTP %d); check AZURE_API_KEY" % code
    empty = credentials_warning(exchange, settings())
    assert empty.startswith("the upstream refused the credentials (HTTP %d)" % code)
    assert "AZURE_API_KEY is empty" in empty and "client's own" in empty and "forwarded" in empty
    guarded = credentials_warning(exchange, settings(PROXY_API_KEY="proxy-secret-1"))
    assert "AZURE_API_KEY is empty" in guarded and "PROXY_API_KEY" in guarded and "proxy-secret" not in guarded
    assert "not forwarded" in guarded


@pytest.mark.parametrize("attempts, outcome", [
    ((("ok", 200),), FINAL), ((("ok", 400),), FINAL), ((("ok", 404),), FINAL), ((("ok", 429),), FINAL),
    ((("status", 503), ("status", 503)), GAVE_UP), ((), FINAL),
])
def test_other_answers_give_no_credentials_warning(attempts, outcome):
    assert credentials_warning(exchange_of(*attempts, outcome=outcome), settings()) is None


@pytest.mark.parametrize("key", ["sk-upstream-secret-123", ""])
def test_a_refused_key_is_logged_once_with_the_setting_named(upstream, make_proxy, caplog, key):
    shield = make_proxy(upstream, AZURE_API_KEY=key)
    upstream.plan(status(401), good())
    with caplog.at_level(logging.INFO, logger="retry_shield"):
        code, _, _ = post(shield.port, headers={"Authorization": "Bearer client-dummy"})
        assert code == 401
        assert post(shield.port)[0] == 200
    lines = [record for record in caplog.records if "refused the credentials" in record.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    text = lines[0].getMessage()
    assert "AZURE_API_KEY" in text and "client-dummy" not in text
    if key:
        assert text == "the upstream refused the credentials (HTTP 401); check AZURE_API_KEY"
        assert key not in text
    else:
        assert "AZURE_API_KEY is empty" in text

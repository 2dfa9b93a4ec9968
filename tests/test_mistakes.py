"""The mistakes of a first run answered at once and clearly: a host that does not resolve, refused credentials.

Real proxies on 127.0.0.1:0 against the scripted fake upstream, or against a name under
``.invalid``, which never resolves (RFC 6761): resolution fails locally, with no network.
"""

import json
import logging
import socket
import threading
import time

import pytest

from retry_shield.config import load_config
from tests.conftest import FAST_SETTINGS, RunningProxy
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

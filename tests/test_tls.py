"""An https upstream: the body reader over TLS, kept-alive TLS connections, an untrusted certificate.

The fake upstream serves https://localhost with a certificate from a throwaway CA
(trustme); the proxy trusts it through SSL_CERT_FILE, as a user behind a corporate CA would.
"""

import json
import ssl

import pytest
import trustme

from tests.fake_upstream import FakeUpstream, body_for, cut, good, status
from tests.helpers import request


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with FakeUpstream(tls=context) as fake:
        yield fake


@pytest.fixture
def trusted(ca, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def streamed(port, path="/v1/responses"):
    body = json.dumps({"model": "m", "input": "hi", "messages": [], "stream": True}).encode()
    return request(port, path=path, body=body)


@pytest.mark.parametrize("framing", ["chunked", "events", "length", "close"])
def test_answers_over_tls_arrive_exactly(tls_upstream, trusted, make_proxy, framing):
    answers = [good(text="over TLS " * 40000, deltas=2000, framing=framing), good(text="small", framing=framing)]
    tls_upstream.plan(*answers)
    shield = make_proxy(tls_upstream)
    for answer in answers:
        status_code, _, body = streamed(shield.port)
        assert status_code == 200 and body == tls_upstream.sent[-1] == body_for(answer, "responses")
    peers = {seen.peer for seen in tls_upstream.requests}
    assert len(peers) == (2 if framing == "close" else 1), "kept-alive TLS connections are reused"


def test_failures_over_tls_are_retried(tls_upstream, trusted, make_proxy):
    tls_upstream.plan(status(429), cut(3000), good(text="the answer"))
    shield = make_proxy(tls_upstream)
    status_code, _, body = streamed(shield.port, "/v1/chat/completions")
    assert status_code == 200 and body == body_for(good(text="the answer"), "chat")
    assert tls_upstream.attempts == 3


def test_an_untrusted_certificate_is_one_clear_error_not_retried(tls_upstream, make_proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    shield = make_proxy(tls_upstream)
    status_code, _, body = streamed(shield.port)
    error = json.loads(body)["error"]
    assert status_code == 502 and error["code"] == "tls" and error["attempts"] == 1
    assert "certificate" in error["message"] and "SSL_CERT_FILE" in error["message"]
    assert tls_upstream.attempts == 0


def test_an_https_endpoint_that_speaks_plain_http_is_one_clear_error(upstream, make_proxy):
    shield = make_proxy(upstream, AZURE_ENDPOINT=upstream.url.replace("http://", "https://") + "/v1")
    status_code, _, body = streamed(shield.port)
    error = json.loads(body)["error"]
    assert status_code == 502 and error["code"] == "tls" and error["attempts"] == 1
    assert "http://" in error["message"]


def test_models_with_an_untrusted_certificate_names_the_tls_problem(tls_upstream, make_proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    shield = make_proxy(tls_upstream)
    status_code, headers, body = request(shield.port, "GET", "/v1/models", body=None)
    error = json.loads(body)["error"]
    assert status_code == 502 and headers["content-type"] == "application/json"
    assert error["code"] == "upstream_error" and error["message"].startswith("cannot list models upstream")
    assert "not trusted" in error["message"] and "SSL_CERT_FILE" in error["message"]
    assert "[SSL" not in error["message"]  # the proxy's explanation, not ssl's exception text
    assert tls_upstream.requests == []


def test_models_over_tls_reuse_the_kept_alive_connection(tls_upstream, trusted, make_proxy):
    shield = make_proxy(tls_upstream)
    assert streamed(shield.port)[0] == 200
    status_code, _, body = request(shield.port, "GET", "/v1/models", body=None)
    assert status_code == 200 and json.loads(body)["data"]
    assert len({seen.peer for seen in tls_upstream.requests}) == 1, "one TLS handshake for both"

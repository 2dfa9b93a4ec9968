"""URL mapping and header rewriting: pure functions."""

import pytest

import proxy


@pytest.mark.parametrize("path, operation", [
    ("/v1/responses", "/responses"), ("/responses", "/responses"), ("/v1/chat/completions", "/chat/completions"),
    ("/chat/completions/", "/chat/completions"), ("/v1/models", "/models"), ("/v1/embeddings", None),
    ("/v2/responses", None), ("/", None),
])
def test_operation_of(path, operation):
    assert proxy.operation_of(path) == operation


@pytest.mark.parametrize("endpoint, operation, query, url", [
    ("https://x.openai.azure.com/openai/v1", "/responses", "",
     "https://x.openai.azure.com/openai/v1/responses"),
    ("https://x.openai.azure.com/openai/v1/", "/chat/completions", "",
     "https://x.openai.azure.com/openai/v1/chat/completions"),
    ("https://api.openai.com/v1", "/responses", "", "https://api.openai.com/v1/responses"),
    ("http://127.0.0.1:1234/v1", "/chat/completions", "", "http://127.0.0.1:1234/v1/chat/completions"),
    ("http://127.0.0.1:1234/v1", "/models", "", "http://127.0.0.1:1234/v1/models"),
    ("https://x.openai.azure.com/openai/v1?api-version=preview", "/responses", "a=1",
     "https://x.openai.azure.com/openai/v1/responses?api-version=preview&a=1"),
    ("https://x.openai.azure.com/openai/v1?api-version=preview", "/responses", "api-version=old",
     "https://x.openai.azure.com/openai/v1/responses?api-version=preview"),
    # A full operation URL: every POST goes there, whatever the client asked for.
    ("https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
     "/chat/completions", "", "https://x.openai.azure.com/openai/deployments/gpt/chat/completions"
     "?api-version=2024-10-21"),
    ("https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
     "/responses", "", "https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"),
    ("https://x.openai.azure.com/openai/responses?api-version=2025-04-01-preview", "/responses", "",
     "https://x.openai.azure.com/openai/responses?api-version=2025-04-01-preview"),
])
def test_upstream_url(endpoint, operation, query, url):
    assert proxy.upstream_url(endpoint, operation, query) == url


def test_redact_url_drops_credentials_and_query():
    redacted = proxy.redact_url("https://user:pass@x.openai.azure.com:8443/openai/v1?api-key=SECRET")
    assert redacted == "https://x.openai.azure.com:8443/openai/v1"


CLIENT = [("Host", "127.0.0.1:8888"), ("Content-Length", "10"), ("Authorization", "Bearer client"),
          ("api-key", "client"), ("Connection", "keep-alive, X-Drop"), ("X-Drop", "1"), ("Keep-Alive", "5"),
          ("Transfer-Encoding", "chunked"), ("Accept-Encoding", "gzip"), ("OpenAI-Beta", "responses=v1"),
          ("User-Agent", "codex")]


def test_upstream_headers_with_key():
    headers = proxy.upstream_headers(CLIENT, "sk-real")
    assert headers == {"OpenAI-Beta": "responses=v1", "User-Agent": "codex", "api-key": "sk-real",
                       "Authorization": "Bearer sk-real", "Accept-Encoding": "identity"}


def test_upstream_headers_without_key_pass_client_credentials():
    headers = proxy.upstream_headers(CLIENT, "")
    assert headers["Authorization"] == "Bearer client" and headers["api-key"] == "client"
    assert not {"Host", "Content-Length", "Connection", "X-Drop", "Keep-Alive", "Transfer-Encoding"} & set(headers)


def test_upstream_headers_never_forward_the_proxy_key():
    headers = proxy.upstream_headers(CLIENT, "", drop_credentials=True)
    assert "Authorization" not in headers and "api-key" not in headers


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("LOCALHOST.", True), ("app.localhost", True), ("127.0.0.1", True), ("127.8.9.10", True),
    ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("192.168.1.2", False), ("example.com", False),
    ("localhost.example.com", False),
])
def test_is_loopback_host(host, loopback):
    assert proxy.is_loopback_host(host) is loopback

"""URL mapping, redaction and header rewriting: pure functions."""

import pytest

from retry_shield.http1 import upstream_headers
from retry_shield.routes import is_loopback_host, operation_of, redact_url, upstream_protocol, upstream_url


@pytest.mark.parametrize("path, operation", [
    ("/v1/responses", "/responses"), ("/responses", "/responses"), ("/v1/responses/", "/responses"),
    ("/v1/chat/completions", "/chat/completions"), ("/chat/completions", "/chat/completions"),
    ("/chat/completions/", "/chat/completions"), ("/v1/models", "/models"), ("/models", "/models"),
    ("/v1/embeddings", None), ("/v2/responses", None), ("/v1/v1/responses", None), ("/v1", None),
    ("/", None), ("/v1/responses/resp_123", None), ("/health", None),
])
def test_operation_of(path, operation):
    assert operation_of(path) == operation


AZURE_FULL = "https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"


@pytest.mark.parametrize("endpoint, operation, query, url", [
    # Base URLs: the client's operation is appended.
    ("https://x.openai.azure.com/openai/v1", "/responses", "", "https://x.openai.azure.com/openai/v1/responses"),
    ("https://x.openai.azure.com/openai/v1", "/chat/completions", "",
     "https://x.openai.azure.com/openai/v1/chat/completions"),
    ("https://x.openai.azure.com/openai/v1/", "/responses", "", "https://x.openai.azure.com/openai/v1/responses"),
    ("https://api.openai.com/v1", "/responses", "", "https://api.openai.com/v1/responses"),
    ("https://api.openai.com/v1/", "/chat/completions", "", "https://api.openai.com/v1/chat/completions"),
    ("http://127.0.0.1:1234/v1", "/chat/completions", "", "http://127.0.0.1:1234/v1/chat/completions"),
    ("http://127.0.0.1:1234/v1/", "/responses", "", "http://127.0.0.1:1234/v1/responses"),
    ("http://127.0.0.1:1234/v1", "/models", "", "http://127.0.0.1:1234/v1/models"),
    ("http://[::1]:1234/v1", "/responses", "", "http://[::1]:1234/v1/responses"),
    # Full operation URLs: every POST goes there, whatever the client asked for.
    (AZURE_FULL, "/chat/completions", "", AZURE_FULL),
    (AZURE_FULL, "/responses", "", AZURE_FULL),
    ("https://x.openai.azure.com/openai/deployments/gpt/chat/completions/?api-version=2024-10-21",
     "/chat/completions", "", "https://x.openai.azure.com/openai/deployments/gpt/chat/completions"
     "?api-version=2024-10-21"),
    ("https://x.openai.azure.com/openai/responses?api-version=2025-04-01-preview", "/chat/completions", "",
     "https://x.openai.azure.com/openai/responses?api-version=2025-04-01-preview"),
    # Query strings: the endpoint's are kept, the client's are added, the endpoint's win a clash.
    ("https://x.openai.azure.com/openai/v1?api-version=preview", "/responses", "",
     "https://x.openai.azure.com/openai/v1/responses?api-version=preview"),
    ("https://x.openai.azure.com/openai/v1?api-version=preview", "/responses", "a=1",
     "https://x.openai.azure.com/openai/v1/responses?api-version=preview&a=1"),
    ("https://x.openai.azure.com/openai/v1?api-version=preview", "/responses", "api-version=old&b=2",
     "https://x.openai.azure.com/openai/v1/responses?api-version=preview&b=2"),
    (AZURE_FULL, "/chat/completions", "api-version=2023-05-15&c=3", AZURE_FULL + "&c=3"),
    ("http://127.0.0.1:1234/v1", "/responses", "a=1&a=2", "http://127.0.0.1:1234/v1/responses?a=1&a=2"),
])
def test_upstream_url(endpoint, operation, query, url):
    assert upstream_url(endpoint, operation, query) == url


@pytest.mark.parametrize("url, redacted", [
    ("https://user:pass@x.openai.azure.com:8443/openai/v1?api-key=SECRET",
     "https://x.openai.azure.com:8443/openai/v1"),
    ("https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21&key=SECRET",
     "https://x.openai.azure.com/openai/deployments/gpt/chat/completions"),
    ("http://:SECRET@127.0.0.1:1234/v1#SECRET", "http://127.0.0.1:1234/v1"),
    ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ("http://user:SECRET@[::1]:1234/v1?k=SECRET", "http://[::1]:1234/v1"),
])
def test_redact_url_drops_userinfo_and_query(url, redacted):
    assert redact_url(url) == redacted
    assert "SECRET" not in redact_url(url)


def names(headers):
    return {name.lower() for name in headers}


CLIENT = [
    ("Host", "127.0.0.1:8888"), ("Content-Length", "10"), ("Content-Type", "application/json"),
    ("authorization", "Bearer client-key"), ("API-Key", "client-key"), ("Connection", "keep-alive, X-Drop-Me"),
    ("connection", "X-Also-Dropped"), ("X-Drop-Me", "1"), ("x-also-dropped", "1"), ("Keep-Alive", "timeout=5"),
    ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Trailer", "X-Checksum"), ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic abc"), ("Proxy-Connection", "keep-alive"), ("Accept-Encoding", "gzip, br"),
    ("OpenAI-Beta", "responses=v1"), ("User-Agent", "codex_cli_rs/0.169"), ("originator", "codex_cli_rs"),
    ("session_id", "abc-123"), ("Accept", "text/event-stream"),
]
NEVER = {"host", "content-length", "connection", "x-drop-me", "x-also-dropped", "keep-alive", "transfer-encoding",
         "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"}
PASSED = {"Content-Type": "application/json", "OpenAI-Beta": "responses=v1", "User-Agent": "codex_cli_rs/0.169",
          "originator": "codex_cli_rs", "session_id": "abc-123", "Accept": "text/event-stream"}


def test_with_a_key_ours_replace_the_clients_credentials():
    headers = upstream_headers(CLIENT, "sk-real")
    assert headers == dict(PASSED, **{"api-key": "sk-real", "Authorization": "Bearer sk-real",
                                      "Accept-Encoding": "identity"})


def test_without_a_key_the_clients_credentials_pass_through():
    headers = upstream_headers(CLIENT, "")
    assert headers == dict(PASSED, **{"authorization": "Bearer client-key", "API-Key": "client-key",
                                      "Accept-Encoding": "identity"})


def test_without_any_key_no_credentials_are_invented():
    headers = upstream_headers([("Content-Type", "application/json")], "")
    assert headers == {"Content-Type": "application/json", "Accept-Encoding": "identity"}


def test_proxy_key_is_never_forwarded():
    headers = upstream_headers(CLIENT, "", drop_credentials=True)
    assert not names(headers) & {"authorization", "api-key"}
    assert upstream_headers(CLIENT, "sk-real", drop_credentials=True)["api-key"] == "sk-real"


@pytest.mark.parametrize("api_key", ["", "sk-real"])
def test_hop_by_hop_host_length_and_connection_named_headers_are_dropped(api_key):
    headers = upstream_headers(CLIENT, api_key)
    assert not names(headers) & NEVER
    assert [value for name, value in headers.items() if name.lower() == "accept-encoding"] == ["identity"]


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("LOCALHOST.", True), ("app.localhost", True), ("127.0.0.1", True), ("127.8.9.10", True),
    ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("192.168.1.2", False), ("example.com", False),
    ("localhost.example.com", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("client, endpoint, setting, expected", [
    ("responses", "http://h/v1", "auto", ("responses", True)),
    ("chat", "http://h/v1", "auto", ("chat", True)),
    ("responses", "https://n.openai.azure.com/openai/deployments/d/chat/completions?api-version=1", "auto",
     ("chat", False)),
    ("chat", "http://h/openai/deployments/d/responses", "auto", ("responses", False)),
    ("responses", "http://h/v1", "chat", ("chat", False)),
    ("chat", "http://h/v1/", "chat", ("chat", False)),
])
def test_the_upstream_protocol_is_the_setting_the_url_or_the_clients_own(client, endpoint, setting, expected):
    assert upstream_protocol(client, endpoint, setting) == expected

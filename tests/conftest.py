"""Shared servers: the scripted fake upstream and the real proxy, both on 127.0.0.1:0."""

import os
import socket
import threading

import pytest

from retry_shield.config import SETTINGS, load_config
from retry_shield.server import ShieldServer
from tests.fake_upstream import FakeUpstream

FAST_SETTINGS = {
    "PORT": "0",
    "HOST": "127.0.0.1",
    "RETRY_BASE_DELAY": "0.01",
    "RETRY_MAX_DELAY": "0.05",
    "UPSTREAM_TIMEOUT": "2",
    "CONNECT_TIMEOUT": "2",
    "TOTAL_TIMEOUT": "20",
}


@pytest.fixture
def environ():
    """os.environ without any setting; whatever the test or a .env file adds is removed afterwards."""
    names = [setting.env for setting in SETTINGS] + [name for name in os.environ if name.startswith("FALLBACK_")]
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    yield os.environ
    for name in names + [name for name in os.environ if name.startswith("FALLBACK_")]:
        os.environ.pop(name, None)
    os.environ.update(saved)


@pytest.fixture
def taken_port():
    """A port this test holds; a bad setting that slipped through fails on it instead of serving forever."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.fixture
def chat_upstream():
    """A scripted upstream that speaks Chat Completions only: POST /responses gets a 404, as from real ones."""
    with FakeUpstream(speaks=("chat",)) as fake:
        yield fake


@pytest.fixture
def responses_upstream():
    """A scripted upstream that speaks the Responses API only: POST /chat/completions gets a 404, as from real ones."""
    with FakeUpstream(speaks=("responses",)) as fake:
        yield fake


@pytest.fixture
def make_upstream():
    """make_upstream(speaks=...): one more scripted upstream on a port of its own (a fallback), stopped afterwards."""
    started = []

    def make(speaks=("responses", "chat")):
        fake = FakeUpstream(speaks=speaks).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


class RunningProxy:
    def __init__(self, config):
        self.config = config
        self.server = ShieldServer(config)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.stopping.set()
        self.server.server_close()
        self.server.close_usage_log()


@pytest.fixture
def make_proxy():
    """make_proxy(upstream, **settings): a real proxy in this process; settings are env names (None removes)."""
    running = []

    def make(upstream, **settings):
        environ = dict(FAST_SETTINGS, AZURE_ENDPOINT=upstream.url + "/v1")
        for name, value in settings.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        shield = RunningProxy(load_config([], environ))
        running.append(shield)
        return shield

    yield make
    for running_proxy in running:
        running_proxy.stop()


@pytest.fixture
def shield(upstream, make_proxy):
    """The real proxy with FAST_SETTINGS in front of ``upstream`` (named so it cannot shadow ``import proxy``)."""
    return make_proxy(upstream)

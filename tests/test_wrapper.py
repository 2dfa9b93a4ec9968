"""chatgpt.sh with a tiny fake client: arguments, exit codes, signals, reuse, first-run config."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.fake_upstream import good
from tests.helpers import free_port, request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(HERE, "chatgpt.sh")

FAKE_CLIENT = textwrap.dedent("""\
    #!{python}
    import json, os, sys, time
    with open(os.environ["FAKE_RECORD"], "w") as record:
        json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "codex_home": os.environ.get("CODEX_HOME"),
                   "key": os.environ.get("RETRY_SHIELD_API_KEY"),
                   "base_url": os.environ.get("OPENAI_BASE_URL")}}, record)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
""")


class Wrapper:
    """chatgpt.sh started through a symlink in another folder, with a fake client and a fresh CODEX_HOME."""

    def __init__(self, tmp_path, upstream, client_name="codex"):
        self.tmp = tmp_path
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.link = bin_dir / "chatgpt"
        os.symlink(WRAPPER, str(self.link))
        self.client = bin_dir / client_name
        self.client.write_text(FAKE_CLIENT.format(python=sys.executable))
        self.client.chmod(0o755)
        self.record = tmp_path / "record.json"
        self.home = tmp_path / "codex-home"
        self.port = free_port()
        self.log = tmp_path / "proxy.log"
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(self.port),
                        CODEX_HOME=str(self.home), CLIENT_EXECUTABLE=str(self.client), SHIELD_LOG=str(self.log),
                        FAKE_RECORD=str(self.record))
        self.env.pop("CLIENT_CONFIG_DIR", None)

    def run(self, *args, **env):
        return subprocess.run([str(self.link)] + list(args), cwd=str(self.workdir), env=dict(self.env, **env),
                              capture_output=True, text=True, timeout=60)

    def start(self, *args, **env):
        return subprocess.Popen([str(self.link)] + list(args), cwd=str(self.workdir), env=dict(self.env, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def recorded(self):
        return json.loads(self.record.read_text())

    def wait_for_client(self, timeout=30):
        deadline = time.monotonic() + timeout
        while not (self.record.exists() and self.record.read_text()):
            assert time.monotonic() < deadline, "the client never started"
            time.sleep(0.02)
        return self.recorded()


def listening(port):
    try:
        request(port, "GET", "/health", body=None)
        return True
    except OSError:
        return False


def wait_until_gone(port, pid, timeout=15):
    deadline = time.monotonic() + timeout
    while listening(port) or alive(pid):
        assert time.monotonic() < deadline, "the proxy is still there"
        time.sleep(0.05)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as stat:  # a zombie counts as gone only once reaped: it must not be one
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def wrapper(tmp_path, upstream):
    return Wrapper(tmp_path, upstream)


ARGS = ["exec", "two words", 'a "quoted" word', "it's", "", "$HOME", "*", "--flag=x y", "new\nline"]


def test_arguments_reach_the_client_intact_after_the_overrides(wrapper):
    result = wrapper.run(*ARGS)
    assert result.returncode == 0, result.stderr
    seen = wrapper.recorded()
    assert seen["argv"][-len(ARGS):] == ARGS
    overrides = seen["argv"][:-len(ARGS)]
    assert overrides[0::2] == ["-c", "-c"] and overrides[1] == "model_provider=retry_shield"
    assert 'base_url="http://127.0.0.1:%d/v1"' % wrapper.port in overrides[3]
    assert 'wire_api="responses"' in overrides[3] and 'env_key="RETRY_SHIELD_API_KEY"' in overrides[3]
    assert seen["key"] and seen["codex_home"] == str(wrapper.home)
    assert not listening(wrapper.port)


def test_other_clients_get_exactly_their_arguments_and_the_base_url(tmp_path, upstream):
    wrapper = Wrapper(tmp_path, upstream, client_name="other-client")
    assert wrapper.run(*ARGS).returncode == 0
    seen = wrapper.recorded()
    assert seen["argv"] == ARGS and seen["base_url"] == "http://127.0.0.1:%d/v1" % wrapper.port


@pytest.mark.parametrize("code", [0, 3, 42])
def test_client_exit_code_comes_back(wrapper, code):
    assert wrapper.run("exec", "x", FAKE_EXIT=str(code)).returncode == code


def test_the_client_really_talks_to_the_proxy(wrapper, upstream):
    script = wrapper.tmp / "bin" / "codex"
    script.write_text(textwrap.dedent("""\
        #!{python}
        import http.client, os, sys
        port = int(os.environ["OPENAI_BASE_URL"].split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/v1/responses", body='{{"model": "m", "input": "hi", "stream": true}}')
        sys.stdout.buffer.write(conn.getresponse().read())
    """).format(python=sys.executable))
    upstream.plan(good(text="via the proxy"))
    result = wrapper.run("exec", "hi")
    assert result.returncode == 0 and result.stdout.encode() == upstream.sent[-1]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signals_leave_no_proxy_behind(wrapper, signum, code):
    process = wrapper.start("exec", "x", FAKE_SLEEP="60")
    client = wrapper.wait_for_client()
    health = json.loads(request(wrapper.port, "GET", "/health", body=None)[2])
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground process group
    else:
        process.send_signal(signum)
    process.communicate(timeout=30)
    assert process.returncode == code
    wait_until_gone(wrapper.port, health["pid"])
    assert not alive(client["pid"])


def test_a_second_wrapper_reuses_the_running_proxy(wrapper):
    first = wrapper.start("exec", "long", FAKE_SLEEP="60")
    wrapper.wait_for_client()
    pid = json.loads(request(wrapper.port, "GET", "/health", body=None)[2])["pid"]
    second = wrapper.run("exec", "short", FAKE_RECORD=str(wrapper.tmp / "second.json"))
    assert second.returncode == 0 and "reusing" in second.stderr
    assert json.loads(request(wrapper.port, "GET", "/health", body=None)[2])["pid"] == pid  # left running
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    wait_until_gone(wrapper.port, pid)


def test_missing_client_is_reported_before_anything_starts(wrapper):
    result = wrapper.run("exec", "x", CLIENT_EXECUTABLE="no-such-client-here")
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1 and "no-such-client-here" in result.stderr
    assert not wrapper.log.exists() and not listening(wrapper.port)


def test_missing_python_is_reported(wrapper):
    result = wrapper.run("exec", "x", PYTHON="no-such-python")
    assert result.returncode == 127 and "no-such-python" in result.stderr and not wrapper.log.exists()


def test_a_proxy_that_cannot_start_is_explained(wrapper):
    result = wrapper.run("exec", "x", MAX_RETRIES="-1")
    assert result.returncode == 1
    assert str(wrapper.log) in result.stderr and "MAX_RETRIES='-1'" in result.stderr
    assert not wrapper.record.exists()


def test_a_foreign_program_on_the_port_is_named(wrapper):
    import http.server
    import threading
    foreign = http.server.HTTPServer(("127.0.0.1", wrapper.port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    try:
        result = wrapper.run("exec", "x")
    finally:
        foreign.shutdown()
        foreign.server_close()
    assert result.returncode == 1 and "held by another program" in result.stderr
    assert not wrapper.record.exists()


def test_first_run_creates_the_config_with_the_real_port(wrapper):
    assert wrapper.run("exec", "x").returncode == 0
    config = (wrapper.home / "config.toml").read_text()
    assert 'base_url = "http://127.0.0.1:%d/v1"' % wrapper.port in config
    assert 'model_provider = "retry_shield"' in config


def test_an_existing_config_is_left_unchanged(wrapper):
    wrapper.home.mkdir()
    mine = b'model = "my-own"\n# my comments\n[model_providers.mine]\nname = "x"\n'
    (wrapper.home / "config.toml").write_bytes(mine)
    assert wrapper.run("exec", "x").returncode == 0
    assert (wrapper.home / "config.toml").read_bytes() == mine


def wrapper_beside_env_file(tmp_path, upstream, env_text, client=FAKE_CLIENT):
    """A copy of the project with its own .env (env_text), run through the symlink, those settings unset."""
    import shutil
    project = tmp_path / "project"
    project.mkdir()
    for name in ("chatgpt.sh", "proxy.py", "config_template.toml"):
        shutil.copy(os.path.join(HERE, name), str(project / name))
    shutil.copytree(os.path.join(HERE, "retry_shield"), str(project / "retry_shield"))
    (project / ".env").write_text(env_text)
    wrapper = Wrapper(tmp_path, upstream)
    wrapper.client.write_text(client.format(python=sys.executable))
    os.remove(str(wrapper.link))
    os.symlink(str(project / "chatgpt.sh"), str(wrapper.link))
    for name in ("PORT", "AZURE_ENDPOINT", "PROXY_API_KEY"):
        wrapper.env.pop(name, None)
    return wrapper


def test_port_and_proxy_key_come_from_env_file_beside_the_script(tmp_path, upstream):
    """The wrapper reads PORT and PROXY_API_KEY from the .env beside its real location."""
    port = free_port()
    wrapper = wrapper_beside_env_file(tmp_path, upstream,
                                      "AZURE_ENDPOINT=%s/v1\nPORT=%d\nPROXY_API_KEY='local-secret'\n"
                                      % (upstream.url, port))
    assert wrapper.run("exec", "x").returncode == 0
    seen = wrapper.recorded()
    assert seen["key"] == "local-secret" and 'base_url="http://127.0.0.1:%d/v1"' % port in seen["argv"][3]


# Sends one request through the proxy with the key the wrapper gave it, and records the answer's status.
KEYED_CLIENT = textwrap.dedent("""\
    #!{python}
    import http.client, json, os, sys
    key, base_url = os.environ["RETRY_SHIELD_API_KEY"], os.environ["OPENAI_BASE_URL"]
    conn = http.client.HTTPConnection("127.0.0.1", int(base_url.split(":")[2].split("/")[0]), timeout=30)
    conn.request("POST", "/v1/responses", body='{{"model": "m", "input": "hi", "stream": true}}',
                 headers={{"Authorization": "Bearer " + key}})
    status = conn.getresponse().status
    with open(os.environ["FAKE_RECORD"], "w") as record:
        json.dump({{"argv": sys.argv[1:], "key": key, "base_url": base_url, "status": status}}, record)
""")


@pytest.mark.parametrize("line, key", [
    ("PROXY_API_KEY=abc # note", "abc"),                  # a comment after the value is no part of it
    ('PROXY_API_KEY="se#cret" # note', "se#cret"),        # a # inside quotes is part of it
    ("export PROXY_API_KEY='a b'  ", "a b"),
    ("PROXY_API_KEY=first\nPROXY_API_KEY=  last  ", "last"),
])
def test_the_client_gets_the_proxy_key_python_dotenv_reads(tmp_path, upstream, line, key):
    """The wrapper reads .env as the proxy does (python-dotenv), so the key it hands the client is accepted."""
    wrapper = wrapper_beside_env_file(tmp_path, upstream, "AZURE_ENDPOINT=%s/v1\n%s\n" % (upstream.url, line),
                                      client=KEYED_CLIENT)
    result = wrapper.run("exec", "x", PORT=str(wrapper.port))
    assert result.returncode == 0, result.stderr
    seen = wrapper.recorded()
    assert seen["key"] == key and seen["status"] == 200


def test_an_exported_port_in_env_file_is_the_port_used(tmp_path, upstream):
    port = free_port()
    wrapper = wrapper_beside_env_file(tmp_path, upstream, "AZURE_ENDPOINT=%s/v1\nexport PORT=%d\n"
                                      % (upstream.url, port), client=KEYED_CLIENT)
    result = wrapper.run("exec", "x")
    assert result.returncode == 0, result.stderr
    seen = wrapper.recorded()
    assert seen["base_url"] == "http://127.0.0.1:%d/v1" % port and seen["status"] == 200
    assert 'base_url="http://127.0.0.1:%d/v1"' % port in seen["argv"][3]


def test_the_environment_wins_over_env_file(tmp_path, upstream):
    env_text = "AZURE_ENDPOINT=%s/v1\nPORT=%d\nPROXY_API_KEY=from-file\n" % (upstream.url, free_port())
    wrapper = wrapper_beside_env_file(tmp_path, upstream, env_text, client=KEYED_CLIENT)
    result = wrapper.run("exec", "x", PORT=str(wrapper.port), PROXY_API_KEY="from-environment")
    assert result.returncode == 0, result.stderr
    seen = wrapper.recorded()
    assert seen["key"] == "from-environment" and seen["status"] == 200
    assert seen["base_url"] == "http://127.0.0.1:%d/v1" % wrapper.port


def test_without_python_dotenv_env_file_is_ignored_with_one_warning(tmp_path, upstream):
    """Neither the wrapper nor the proxy reads .env then: both use the environment, and one line says so."""
    hidden = tmp_path / "no-dotenv" / "dotenv"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('python-dotenv hidden by the test')\n")
    wrapper = wrapper_beside_env_file(tmp_path, upstream, "PORT=%d\nPROXY_API_KEY=from-file\n" % free_port(),
                                      client=KEYED_CLIENT)
    result = wrapper.run("exec", "x", PORT=str(wrapper.port), AZURE_ENDPOINT=upstream.url + "/v1",
                         PYTHONPATH=str(hidden.parent))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "python-dotenv" in line]
    assert len(warnings) == 1 and "pip install -r requirements.txt" in warnings[0]
    seen = wrapper.recorded()
    assert seen["key"] != "from-file" and seen["status"] == 200
    assert seen["base_url"] == "http://127.0.0.1:%d/v1" % wrapper.port

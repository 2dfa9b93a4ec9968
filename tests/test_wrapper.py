"""chatgpt.sh with a tiny fake client: arguments, exit codes, signals, reuse, first-run config."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.fake_upstream import good, status
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
    while os.environ.get("FAKE_UNTIL") and not os.path.exists(os.environ["FAKE_UNTIL"]):
        time.sleep(0.02)  # runs until the test creates this file
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
                        FAKE_RECORD=str(self.record), TMPDIR=str(tmp_path))  # the lease folders go there
        self.leases = tmp_path / ("retry-shield-%d.leases" % self.port)
        self.started = []
        self.env.pop("CLIENT_CONFIG_DIR", None)

    def run(self, *args, **env):
        return subprocess.run([str(self.link)] + list(args), cwd=str(self.workdir), env=dict(self.env, **env),
                              capture_output=True, text=True, timeout=60)

    def start(self, *args, **env):
        process = subprocess.Popen([str(self.link)] + list(args), cwd=str(self.workdir), env=dict(self.env, **env),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.started.append(process)
        return process

    def clean_up(self):
        """After a failed test too: the wrappers it started, their clients, and a proxy left on its port."""
        for process in self.started:
            if process.poll() is None:
                process.terminate()
            try:
                process.communicate(timeout=30)
            except (subprocess.TimeoutExpired, ValueError):
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.kill(json.loads(request(self.port, "GET", "/health", body=None, timeout=2)[2])["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass

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
    wrapper = Wrapper(tmp_path, upstream)
    yield wrapper
    wrapper.clean_up()


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


# -- two terminals: leases on one proxy ------------------------------------------------------

def health(port):
    return json.loads(request(port, "GET", "/health", body=None)[2])


def wait_for_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.02)


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class Terminal:
    """chatgpt.sh in a terminal of its own (a pty that is its controlling terminal): Ctrl-C is a real one."""

    def __init__(self, wrapper, *args, **env):
        import pty
        self.master, slave = pty.openpty()
        # A new session, then the pty as its controlling terminal: its process group is the foreground one.
        become = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                  "os.execv(sys.argv[1], sys.argv[1:])")
        self.process = subprocess.Popen([sys.executable, "-c", become, str(wrapper.link)] + list(args),
                                        cwd=str(wrapper.workdir), env=dict(wrapper.env, **env), stdin=slave,
                                        stdout=slave, stderr=slave, start_new_session=True)
        wrapper.started.append(self.process)
        os.close(slave)
        self.output = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: every process of the terminal closed it
                return
            if not data:
                return
            self.output += data

    def ctrl_c(self):
        os.write(self.master, b"\x03")

    def wait(self, timeout=30):
        code = self.process.wait(timeout=timeout)
        self.reader.join(10)
        os.close(self.master)
        return code


@pytest.mark.parametrize("first", ["starter", "reuser"])
def test_whichever_wrapper_exits_first_the_other_keeps_the_proxy(wrapper, upstream, first):
    """Two terminals: the first chatgpt.sh to exit leaves the proxy (and a request in flight) to the other."""
    done = {name: wrapper.tmp / (name + ".done") for name in ("starter", "reuser")}
    starter = wrapper.start("exec", "a", FAKE_UNTIL=str(done["starter"]))
    wrapper.wait_for_client()
    pid = health(wrapper.port)["pid"]
    reuser_record = wrapper.tmp / "reuser.json"
    reuser = wrapper.start("exec", "b", FAKE_UNTIL=str(done["reuser"]), FAKE_RECORD=str(reuser_record))
    wait_for_file(reuser_record)
    upstream.plan(good(text="answered while the first one left", delay=1.0))
    answers = []
    in_flight = threading.Thread(target=lambda: answers.append(request(wrapper.port)))
    in_flight.start()
    wait_for(lambda: upstream.attempts == 1, "the request never reached the upstream")
    processes = {"starter": starter, "reuser": reuser}
    done[first].touch()
    _, err = processes[first].communicate(timeout=30)
    assert processes[first].returncode == 0, err
    in_flight.join(30)
    assert answers and answers[0][0] == 200 and answers[0][2] == upstream.sent[-1]
    assert health(wrapper.port)["pid"] == pid  # the same proxy, still there for the other one
    assert request(wrapper.port)[0] == 200
    last = "reuser" if first == "starter" else "starter"
    done[last].touch()
    _, err = processes[last].communicate(timeout=30)
    assert processes[last].returncode == 0, err
    wait_until_gone(wrapper.port, pid)  # the last one to leave stopped it: the port is free
    assert not wrapper.leases.exists()  # and removed the lease folder


def test_wrappers_arriving_and_leaving_at_once_never_lose_the_proxy_under_a_client(wrapper):
    """Arrivals and departures race: every client's request is answered, and the last one out cleans up."""
    wrapper.client.write_text(KEYED_CLIENT.format(python=sys.executable))
    for round_ in range(2):
        records = [wrapper.tmp / ("round%d-%d.json" % (round_, n)) for n in range(6)]
        processes = [wrapper.start("exec", "x", FAKE_RECORD=str(record)) for record in records]
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
        assert [json.loads(record.read_text())["status"] for record in records] == [200] * 6
        assert not listening(wrapper.port) and not wrapper.leases.exists()


def test_ctrl_c_in_one_terminal_leaves_the_proxy_to_the_other(wrapper):
    """Ctrl-C reaches the foreground process group of its own terminal only: never the shared proxy."""
    starter = Terminal(wrapper, "exec", "a", FAKE_SLEEP="60")
    client = wrapper.wait_for_client()
    pid = health(wrapper.port)["pid"]
    done, reuser_record = wrapper.tmp / "reuser.done", wrapper.tmp / "reuser.json"
    reuser = wrapper.start("exec", "b", FAKE_UNTIL=str(done), FAKE_RECORD=str(reuser_record))
    wait_for_file(reuser_record)
    starter.ctrl_c()
    assert starter.wait() == 130, starter.output
    assert not alive(client["pid"])
    assert health(wrapper.port)["pid"] == pid and request(wrapper.port)[0] == 200
    done.touch()
    _, err = reuser.communicate(timeout=30)
    assert reuser.returncode == 0, err
    wait_until_gone(wrapper.port, pid)


def test_ctrl_c_in_exec_mode_ends_with_130_and_stops_the_proxy(wrapper):
    """A real Ctrl-C (the terminal's, to its foreground process group) while the client runs."""
    terminal = Terminal(wrapper, "exec", "x", FAKE_SLEEP="60")
    client = wrapper.wait_for_client()
    pid = health(wrapper.port)["pid"]
    terminal.ctrl_c()
    assert terminal.wait() == 130, terminal.output
    assert not alive(client["pid"])
    wait_until_gone(wrapper.port, pid)


def test_ctrl_c_while_the_proxy_starts_leaves_nothing_behind(wrapper):
    """Ctrl-C while the proxy starts (the wrapper's line in the log is written just before): 130, nothing left."""
    process = wrapper.start("exec", "x")
    wait_for(lambda: wrapper.log.exists() and "starts the proxy" in wrapper.log.read_text(), "no start in the log")
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    proxies = [line for line in subprocess.run(["ps", "-ww", "-eo", "command="], capture_output=True,
                                               text=True).stdout.splitlines()
               if "proxy.py --port %d" % wrapper.port in line]
    assert proxies == [] and not listening(wrapper.port) and not wrapper.leases.exists()


def test_the_lease_of_a_killed_wrapper_does_not_keep_the_proxy(wrapper):
    """kill -9 runs no trap: the lease of the dead chatgpt.sh stays, and counts for nothing."""
    starter = wrapper.start("exec", "a", FAKE_SLEEP="60")
    client = wrapper.wait_for_client()
    pid = health(wrapper.port)["pid"]
    done, reuser_record = wrapper.tmp / "reuser.done", wrapper.tmp / "reuser.json"
    reuser = wrapper.start("exec", "b", FAKE_UNTIL=str(done), FAKE_RECORD=str(reuser_record))
    wait_for_file(reuser_record)
    starter.kill()  # chatgpt.sh alone, reaped as its shell would
    starter.wait(timeout=30)
    os.kill(client["pid"], signal.SIGKILL)  # and its client, which holds the output pipes
    starter.communicate(timeout=30)
    assert health(wrapper.port)["pid"] == pid
    done.touch()
    _, err = reuser.communicate(timeout=30)
    assert reuser.returncode == 0, err
    wait_until_gone(wrapper.port, pid)


def test_a_proxy_left_by_a_killed_wrapper_is_reused_and_then_stopped(wrapper):
    """The next chatgpt.sh reuses the orphan (/health names the pid a chatgpt.sh recorded) and stops it."""
    killed = wrapper.start("exec", "a", FAKE_SLEEP="60")
    client = wrapper.wait_for_client()
    pid = health(wrapper.port)["pid"]
    killed.kill()
    killed.wait(timeout=30)
    os.kill(client["pid"], signal.SIGKILL)
    killed.communicate(timeout=30)
    result = wrapper.run("exec", "b", FAKE_RECORD=str(wrapper.tmp / "next.json"))
    assert result.returncode == 0 and "reusing" in result.stderr, result.stderr
    wait_until_gone(wrapper.port, pid)


def test_a_proxy_no_wrapper_started_is_left_running(wrapper, upstream):
    proxy = subprocess.Popen([sys.executable, os.path.join(HERE, "proxy.py"), "--env-file", os.devnull,
                              "--port", str(wrapper.port)], env=wrapper.env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: listening(wrapper.port), "the proxy never answered")
        result = wrapper.run("exec", "x")
        assert result.returncode == 0 and "no chatgpt.sh started" in result.stderr, result.stderr
        assert health(wrapper.port)["pid"] == proxy.pid
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)


def test_port_zero_gives_the_wrapper_a_proxy_on_a_free_port(wrapper):
    wrapper.client.write_text(KEYED_CLIENT.format(python=sys.executable))
    result = wrapper.run("exec", "x", PORT="0", SHIELD_START_TIMEOUT="5")
    assert result.returncode == 0, result.stderr
    seen = wrapper.recorded()
    port = int(seen["base_url"].split(":")[2].split("/")[0])
    assert port != 0 and seen["status"] == 200
    assert 'base_url="http://127.0.0.1:%d/v1"' % port in seen["argv"][3]
    assert not listening(port)


# -- what the wrapper says, and the Python it uses ----------------------------------------------

def test_one_line_says_where_the_log_is_and_the_log_keeps_every_run(wrapper):
    for run in (1, 2):
        result = wrapper.run("exec", "x")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if str(wrapper.log) in line]
        assert len(lines) == 1 and "started the retry-shield proxy on port %d" % wrapper.port in lines[0]
        assert "tail -f" in lines[0]
        # appended to, not overwritten: one banner per run
        assert wrapper.log.read_text().count("listening on http://127.0.0.1:%d/v1" % wrapper.port) == run


def test_a_reusing_wrapper_names_the_log_of_the_proxy_it_reuses(wrapper):
    done = wrapper.tmp / "first.done"
    first = wrapper.start("exec", "a", FAKE_UNTIL=str(done))
    wrapper.wait_for_client()
    result = wrapper.run("exec", "b", FAKE_RECORD=str(wrapper.tmp / "second.json"),
                         SHIELD_LOG=str(wrapper.tmp / "not-the-one.log"))
    done.touch()
    first.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "reusing" in line]
    assert len(lines) == 1 and str(wrapper.log) in lines[0] and "port %d" % wrapper.port in lines[0]


# Marks its start and end on stderr, and sends one request (retried by the proxy) in between.
MARKING_CLIENT = textwrap.dedent("""\
    #!{python}
    import http.client, json, os, sys
    sys.stderr.write("CLIENT START\\n")
    sys.stderr.flush()
    port = int(os.environ["OPENAI_BASE_URL"].split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/responses", body='{{"model": "m", "input": "hi", "stream": true}}')
    status = conn.getresponse().status
    with open(os.environ["FAKE_RECORD"], "w") as record:
        json.dump({{"status": status}}, record)
    sys.stderr.write("CLIENT END\\n")
""")


def test_nothing_but_the_client_writes_to_its_terminal_while_it_runs(wrapper, upstream):
    wrapper.client.write_text(MARKING_CLIENT.format(python=sys.executable))
    upstream.plan(status(429), status(503), good())
    result = wrapper.run("exec", "x", RETRY_BASE_DELAY="0.05", RETRY_MAX_DELAY="0.1")
    assert result.returncode == 0 and wrapper.recorded()["status"] == 200, result.stderr
    assert result.stderr.split("CLIENT START\n", 1)[1] == "CLIENT END\n" and result.stdout == ""
    assert upstream.attempts == 3 and "429" in wrapper.log.read_text()  # the retries went to the log


@pytest.mark.parametrize("where", ["nowhere", "environment", ".env"])
def test_an_empty_upstream_key_gets_one_warning_that_names_the_setting(tmp_path, upstream, where):
    secret = "sk-upstream-secret-4711"
    env_text = "AZURE_ENDPOINT=%s/v1\nAZURE_API_KEY=%s\n" % (upstream.url, secret if where == ".env" else "")
    wrapper = wrapper_beside_env_file(tmp_path, upstream, env_text)
    wrapper.env.pop("AZURE_API_KEY", None)
    extra = {"AZURE_API_KEY": secret} if where == "environment" else {}
    result = wrapper.run("exec", "x", PORT=str(wrapper.port), **extra)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr + result.stdout
    warnings = [line for line in result.stderr.splitlines() if "AZURE_API_KEY" in line]
    if where == "nowhere":
        assert len(warnings) == 1 and "not set" in warnings[0] and str(tmp_path / "project" / ".env") in warnings[0]
    else:
        assert warnings == []


def test_the_venv_beside_the_script_is_preferred(tmp_path, upstream):
    """.venv/bin/python3 beside chatgpt.sh runs the proxy (python-dotenv is there), unless PYTHON says otherwise."""
    wrapper = wrapper_beside_env_file(tmp_path, upstream, "AZURE_ENDPOINT=%s/v1\n" % upstream.url)
    wrapper.env.pop("PYTHON", None)
    wrapper.started = []
    venv = tmp_path / "project" / ".venv"
    # A real venv, without pip (no package index needed); the test's python-dotenv through the system site.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)

    def proxy_command(**env):
        done = tmp_path / "done"
        if done.exists():
            done.unlink()
        if wrapper.record.exists():
            wrapper.record.unlink()
        process = wrapper.start("exec", "x", PORT=str(wrapper.port), FAKE_UNTIL=str(done), **env)
        try:
            wrapper.wait_for_client()
            pid = health(wrapper.port)["pid"]
            return subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True,
                                  text=True).stdout
        finally:
            done.touch()
            _, err = process.communicate(timeout=30)
            assert process.returncode == 0, err

    try:
        assert proxy_command().startswith(str(venv / "bin" / "python3") + " ")
        assert proxy_command(PYTHON=sys.executable).startswith(sys.executable + " ")
    finally:
        wrapper.clean_up()


# -- README: the wrapper's steps, word for word --------------------------------------------------

def readme_block(after):
    """The first ```sh block after the text ``after`` in README.md."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    return re.search(r"```sh\n(.*?)```", text.split(after, 1)[1], re.S).group(1)


def test_readme_symlink_steps_work_without_a_local_bin_folder(wrapper):
    """README's symlink block, run as it stands with a HOME that has no ~/.local/bin and a PATH without it."""
    block = readme_block("system-wide `chatgpt` command")
    home = wrapper.tmp / "fresh-home"
    home.mkdir()
    env = dict(wrapper.env, HOME=str(home), PATH="/usr/bin:/bin", PYTHON=sys.executable)
    for run in range(2):  # and again: the steps may be repeated
        result = subprocess.run(["bash", "-ec", block], cwd=HERE, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert os.path.realpath(str(home / ".local" / "bin" / "chatgpt")) == os.path.realpath(WRAPPER)
        assert wrapper.recorded()["argv"][-3:] == ["exec", "--skip-git-repo-check", "explain this repository"]


def test_readme_codex_examples_stay_behind_the_shield_outside_git():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    examples = [line for line in text.splitlines() if re.match(r"\s*(\./chatgpt\.sh|chatgpt) exec\b", line)]
    assert examples and all("--skip-git-repo-check" in line for line in examples), examples
    assert "chatgpt resume" in text and "codex resume" in text

"""The real Codex CLI through chatgpt.sh, against an upstream that throws 429s and cuts streams."""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.fake_upstream import cut, good, stall, status
from tests.helpers import free_port, request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED = os.path.join(HERE, ".cache", "codex", "node_modules", ".bin", "codex")
ANSWER = "The shielded answer arrived whole."
# Codex 0.169 otherwise contacts ab.chatgpt.com (analytics), api.github.com and chatgpt.com (curated
# plugin sync) at start-up; tests talk only to 127.0.0.1 (checked with strace -e connect,sendto).
OFFLINE = ["-c", "analytics.enabled=false", "-c", "features.plugins=false"]


def codex_binary():
    """The Codex CLI to test: CODEX_BIN, else the pinned one .ci/install-codex installs, else codex on PATH."""
    for candidate in (os.environ.get("CODEX_BIN"), PINNED, shutil.which("codex")):
        if candidate and os.path.exists(candidate):
            return candidate
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so the Codex CLI cannot be: the real-client test is skipped")
    pytest.fail("the Codex CLI is not installed: run `bash .ci/install-codex` (CI does)")


def chatgpt_link(tmp_path, bin_dir="bin"):
    """A ``chatgpt`` symlink to chatgpt.sh in a folder of its own, and an empty work folder: (link, workdir)."""
    link = tmp_path / bin_dir / "chatgpt"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.join(HERE, "chatgpt.sh"), str(link))
    workdir = tmp_path / "work"
    workdir.mkdir()
    return link, workdir


@pytest.fixture
def codex_run(tmp_path, upstream):
    binary = codex_binary()
    link, workdir = chatgpt_link(tmp_path, os.path.join("elsewhere", "bin"))
    home = tmp_path / "codex-home"
    port = free_port()

    def run():
        # 429 twice, then five cut streams: alone, Codex fails the turn at the first 429.
        upstream.plan(status(429, headers={"retry-after-ms": "50"}), status(429), *[cut(400)] * 5,
                      good(text=ANSWER))
        env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), CODEX_HOME=str(home),
                   CLIENT_EXECUTABLE=binary, SHIELD_LOG=str(tmp_path / "proxy.log"), RETRY_BASE_DELAY="0.05",
                   RETRY_MAX_DELAY="0.2")
        result = subprocess.run([str(link), "exec", "--skip-git-repo-check", *OFFLINE, "Say something shielded."],
                                cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=180)
        return result, port

    run.home = home
    return run


def assert_proxy_gone(port, timeout=15.0):
    """The wrapper stopped the proxy it started: within ``timeout`` nothing listens on its port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request(port, "GET", "/health", body=None)
        except OSError:
            return
        assert time.monotonic() < deadline, "the proxy still listens after chatgpt.sh ended"
        time.sleep(0.05)


def assert_shielded_turn(result, port, upstream):
    assert result.returncode == 0, result.stderr[-3000:]
    assert ANSWER in result.stdout
    assert upstream.attempts == 8
    assert all(seen.json["stream"] is True for seen in upstream.requests if seen.method == "POST")
    assert_proxy_gone(port)


def test_codex_through_chatgpt_sh_with_an_empty_codex_home(codex_run, upstream):
    result, port = codex_run()
    assert_shielded_turn(result, port, upstream)
    assert (codex_run.home / "config.toml").exists()


def test_codex_through_chatgpt_sh_keeps_the_users_config(codex_run, upstream):
    codex_run.home.mkdir()
    mine = b'# my own Codex settings\nmodel = "gpt-5"\nmodel_reasoning_effort = "low"\n'
    (codex_run.home / "config.toml").write_bytes(mine)
    result, port = codex_run()
    assert_shielded_turn(result, port, upstream)
    assert (codex_run.home / "config.toml").read_bytes() == mine


def test_ctrl_c_on_codex_exec_through_chatgpt_sh_ends_with_130(tmp_path, upstream):
    """A real Ctrl-C (the terminal's) while Codex waits for an answer: exit code 130, nothing left running."""
    import pty
    binary = codex_binary()
    link, workdir = chatgpt_link(tmp_path)
    port = free_port()
    upstream.plan(stall(60))
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), CODEX_HOME=str(tmp_path / "home"),
               CLIENT_EXECUTABLE=binary, SHIELD_LOG=str(tmp_path / "proxy.log"), TMPDIR=str(tmp_path))
    master, slave = pty.openpty()
    # A session of its own with the pty as its controlling terminal: ^C there is SIGINT to its foreground group.
    become = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
    process = subprocess.Popen([sys.executable, "-c", become, str(link), "exec", "--skip-git-repo-check", *OFFLINE,
                                "Say something."], cwd=str(workdir), env=env, stdin=slave, stdout=slave,
                               stderr=slave, start_new_session=True)
    os.close(slave)
    output = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            output.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while upstream.attempts < 1:  # Codex's request reached the upstream through the proxy
            assert process.poll() is None and time.monotonic() < deadline, b"".join(output)[-3000:]
            time.sleep(0.05)
        os.write(master, b"\x03")
        assert process.wait(timeout=60) == 130, b"".join(output)[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
        reader.join(10)
        os.close(master)
    assert_proxy_gone(port)

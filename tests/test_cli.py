"""`python proxy.py` run exactly as README.md shows it, as a real process."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import proxy
from retry_shield.config import SETTINGS
from retry_shield.main import SHUTDOWN_GRACE, exit_code, stopping_message
from tests.helpers import free_port, request, wait_for_health

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    """The two shell lines of README's quick start: install, then run."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_quick_start_runs_the_proxy(upstream, tmp_path):
    install, run = readme_commands()
    # A venv beside proxy.py (Debian and Ubuntu refuse pip into the system Python), the requirements
    # into it, then .env; the proxy run with the venv's Python, which chatgpt.sh also prefers.
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt")
    assert "cp .env.example .env" in install
    assert run == ".venv/bin/python proxy.py"
    for name in ("proxy.py", ".env.example", "requirements.txt"):
        shutil.copy(os.path.join(HERE, name), str(tmp_path / name))
    shutil.copytree(os.path.join(HERE, "retry_shield"), str(tmp_path / "retry_shield"))
    # What the user does by hand after the copy: fill in the endpoint (and here a free port).
    port = free_port()
    example = (tmp_path / ".env.example").read_text()
    assert "AZURE_ENDPOINT=" in example and "\nPORT=\n" in example
    env_text = re.sub(r"(?m)^AZURE_ENDPOINT=.*$", "AZURE_ENDPOINT=" + upstream.url + "/v1", example)
    (tmp_path / ".env").write_text(env_text.replace("\nPORT=\n", "\nPORT=%d\n" % port))
    env = {key: value for key, value in os.environ.items() if key not in {s.env for s in SETTINGS}}
    # The test's own interpreter stands in for .venv/bin/python: it has requirements.txt installed
    # (creating the venv would need the package index).
    process = subprocess.Popen([sys.executable, "proxy.py"], cwd=str(tmp_path), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port)
        status, headers, body = request(port)
        assert status == 200 and body == upstream.sent[-1]
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err  # Ctrl-C, as shells expect it
    assert "listening on http://127.0.0.1:%d/v1" % port in err
    assert "Traceback" not in err + out


def test_sigterm_lets_the_request_in_flight_finish(upstream, tmp_path):
    from tests.fake_upstream import good
    upstream.plan(good(delay=2.0))
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port))
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port)
        import threading
        result = {}
        client = threading.Thread(target=lambda: result.update(answer=request(port)))
        client.start()
        upstream.wait_attempts(1, timeout=10)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # new connections are refused at once, while the request in flight goes on
            try:
                request(port, "GET", "/health", body=None)
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.02)
        assert client.is_alive()
        client.join(timeout=30)
    finally:
        _, err = process.communicate(timeout=30)
    assert result["answer"][0] == 200 and result["answer"][2] == upstream.sent[-1]
    assert process.returncode == 0 and "Traceback" not in err
    with pytest.raises(OSError):
        request(port, "GET", "/health", body=None)


def oldest_python():
    """A Python 3.8 interpreter, if this machine has one (pyenv's, or python3.8 on PATH)."""
    candidates = []
    versions = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "versions")
    if os.path.isdir(versions):
        candidates += [os.path.join(versions, name, "bin", "python") for name in sorted(os.listdir(versions))
                       if name.startswith("3.8.")]
    on_path = shutil.which("python3.8")
    if on_path and "/shims/" not in on_path:  # a pyenv shim runs only the selected version
        candidates.append(on_path)
    return next((path for path in candidates if os.path.exists(path)), None)


@pytest.mark.skipif(oldest_python() is None, reason="no Python 3.8 interpreter on this machine; vermin in .ci/run "
                                                    "still checks 3.8 compatibility statically")
def test_runs_on_python_3_8(upstream):
    from tests.fake_upstream import cut, good
    upstream.plan(cut(100), good())
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), RETRY_BASE_DELAY="0.01")
    env.pop("PYTHONPATH", None)  # 3.8 without python-dotenv: the proxy must still run
    process = subprocess.Popen([oldest_python(), proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port)
        status, _, body = request(port)
        assert status == 200 and body == upstream.sent[-1] and upstream.attempts == 2
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err


def test_sigterm_fails_a_stuck_request_cleanly_within_seconds(upstream):
    from tests.fake_upstream import stall
    import threading
    upstream.plan(stall(60.0, after_bytes=100))
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), UPSTREAM_TIMEOUT="120")
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    result = {}
    try:
        wait_for_health(port)
        client = threading.Thread(target=lambda: result.update(answer=request(port)))
        client.start()
        upstream.wait_attempts(1, timeout=10)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
    status, _, body = result["answer"]
    error = json.loads(body)["error"]
    assert status == 503 and error["type"] == "proxy_error" and error["code"] == "proxy_stopping"
    assert process.returncode == 0 and "Traceback" not in err  # after SIGTERM
    assert took < SHUTDOWN_GRACE + 5


class StderrLines:
    """A process's stderr, read line by line in a thread, so that a test can wait for a line with a deadline."""

    def __init__(self, process):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, "no %r on stderr within %ss: %s" % (text, timeout, self.text())
            time.sleep(0.01)

    def text(self):
        self.thread.join(timeout=5)
        return "".join(self.lines)


def start_proxy(upstream, **settings):
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), **settings)
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    return process, port, StderrLines(process)


def test_ctrl_c_says_what_it_waits_for_and_a_second_one_stops_at_once(upstream):
    """First Ctrl-C: one line at once, the request in flight goes on. Second: the process ends within
    about a second with 130, and the client gets a clean 503 proxy_stopping, not a dropped connection."""
    from tests.fake_upstream import good
    upstream.plan(good(delay=30.0))
    process, port, stderr = start_proxy(upstream)
    result = {}
    try:
        wait_for_health(port)
        client = threading.Thread(target=lambda: result.update(answer=request(port)))
        client.start()
        upstream.wait_attempts(1, timeout=10)
        process.send_signal(signal.SIGINT)
        stderr.wait_for("stopping; waiting up to %g s for 1 request" % SHUTDOWN_GRACE, timeout=1.0)
        assert process.poll() is None and client.is_alive()
        second = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        took = time.monotonic() - second
        client.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    err = stderr.text()
    assert process.returncode == 130, err
    assert took < 1.5, "the second Ctrl-C took %.2f s" % took
    status, headers, body = result["answer"]
    error = json.loads(body)["error"]
    assert status == 503 and error["code"] == "proxy_stopping" and error["type"] == "proxy_error", body
    assert "connection lost" not in error["message"]
    assert "Traceback" not in err and "stopped" in err


def test_the_banner_names_the_fallbacks_and_their_pacing_never_a_key(upstream):
    fallback_key = "sk-fallback-BANNER-0123456789"
    process, port, stderr = start_proxy(upstream, RPM_LIMIT="270", FALLBACK_1_ENDPOINT="http://127.0.0.1:9/v1",
                                        FALLBACK_1_API_KEY=fallback_key, FALLBACK_1_RPM_LIMIT="60",
                                        FALLBACK_1_MODEL="dep-west")
    try:
        stderr.wait_for("retries: up to", timeout=10)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    err = stderr.text()
    assert "pacing: at most 270 requests a minute to the upstream, evenly" in err
    assert ("fallback 1: http://127.0.0.1:9/v1 (key set), model dep-west, upstream API auto, at most 60 requests "
            "a minute") in err
    assert fallback_key not in err


def test_the_stop_line_and_exit_codes():
    assert stopping_message(5.0, 0) == "stopping"
    assert stopping_message(5.0, 1) == "stopping; waiting up to 5 s for 1 request (Ctrl-C again to stop at once)"
    assert stopping_message(2.5, 3).startswith("stopping; waiting up to 2.5 s for 3 requests")
    assert (exit_code(signal.SIGINT), exit_code(signal.SIGTERM), exit_code(None)) == (130, 0, 0)


def test_a_proxy_started_with_ctrl_c_ignored_keeps_ignoring_it(upstream):
    """A script's background job (chatgpt.sh's proxy) starts with SIGINT ignored: the terminal's Ctrl-C is
    for the foreground program, and the script stops the proxy with SIGTERM. Had the SIGINT been taken,
    it would be the first stop signal and the exit code 130."""
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port))
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    stderr = StderrLines(process)
    try:
        wait_for_health(port)
        process.send_signal(signal.SIGINT)
        # Answering takes the proxy back to user space, where a pending signal is delivered: had the
        # SIGINT been taken, it is now ahead of the SIGTERM (two pending at once come in either order).
        assert request(port, "GET", "/health", body=None)[0] == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    err = stderr.text()
    assert process.returncode == 0, err
    assert err.count("stopping") == 1 and "stopping now" not in err

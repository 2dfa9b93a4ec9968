"""The usage log through the real proxy: one whole line per request, after its answer, never a secret."""

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import proxy
from tests.fake_upstream import cut, good, status
from tests.helpers import (assert_one_line_error, free_port, main_in_process, post_and_leave, request,
                           wait_for_health)

PROMPT = "PROMPT-7f3a-please-keep-this-private"
ANSWER = "ANSWER-91bc-only-for-the-client"
UPSTREAM_KEY = "sk-upstream-KEY-5e1d0c9b8a7f"
PROXY_KEY = "proxy-KEY-44aa19cd02"


def lines_of(path):
    with open(path, "rb") as log:
        return log.read().splitlines()


def records_of(path):
    return [json.loads(line) for line in lines_of(path)]


def health(port, headers=None):
    return json.loads(request(port, "GET", "/health", body=None, headers=headers)[2])


def settled(port, headers=None, timeout=10.0):
    """Wait until no request is in flight: each writes its usage line before it counts as done."""
    deadline = time.monotonic() + timeout
    while health(port, headers)["in_flight"]:
        assert time.monotonic() < deadline, "a request is still in flight"
        time.sleep(0.02)


def test_a_retried_request_is_one_line_with_its_attempts_and_their_kinds(upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    upstream.plan(status(429), cut(100), good())
    shield = make_proxy(upstream, USAGE_LOG=str(path))
    code, _, _ = request(shield.port)
    assert code == 200
    settled(shield.port)
    [record] = records_of(path)
    assert [(attempt["kind"], attempt["status"]) for attempt in record["attempts"]] == [
        ("status", 429), ("cut", 200), ("ok", 200)]
    assert (record["outcome"], record["status"], record["retries"], record["path"]) == (
        "delivered", 200, 2, "/v1/responses")
    assert (record["client_api"], record["upstream_api"], record["model_asked"], record["model_sent"],
            record["client_stream"]) == ("responses", "responses", "m", "m", True)
    assert record["waited"] > 0 and record["seconds"] >= record["waited"] and record["bytes"] > 0
    assert record["tokens"] == {"input": 11, "output": 22, "cached": 0, "reasoning": 0}
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600  # a new log is the user's alone


def test_lines_are_appended_to_an_existing_log_and_a_torn_last_line_is_ended(upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b'{"kept": "an earlier line"}\n{"time": "2026-11-30T07:0')  # a crash cut the last line short
    shield = make_proxy(upstream, USAGE_LOG=str(path))
    for _ in range(2):
        assert request(shield.port)[0] == 200
    settled(shield.port)
    lines = lines_of(path)
    assert lines[:2] == [b'{"kept": "an earlier line"}', b'{"time": "2026-11-30T07:0']
    assert [json.loads(line)["outcome"] for line in lines[2:]] == ["delivered", "delivered"]


def test_the_line_is_written_once_the_answer_is_sent(upstream, make_proxy, tmp_path):
    """A client that does not read its (large) answer holds the send: the line waits for it."""
    path = tmp_path / "usage.jsonl"
    upstream.plan(good(text="x" * 8000000))
    shield = make_proxy(upstream, USAGE_LOG=str(path))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", shield.port))
    body = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n"
                 b"\r\n%s" % (len(body), body))
    try:
        assert sock.recv(12) == b"HTTP/1.1 200"  # the answer is being sent, so the request is counted
        deadline = time.monotonic() + 10
        while health(shield.port)["requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health(shield.port)["in_flight"] == 1  # the send is held by the client
        assert lines_of(path) == []
        received = 12
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
    finally:
        sock.close()
    assert received > 16000000
    settled(shield.port)
    [record] = records_of(path)
    assert record["outcome"] == "delivered" and record["bytes"] > 16000000


def test_a_client_that_left_is_logged(upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    upstream.plan(status(503))
    shield = make_proxy(upstream, USAGE_LOG=str(path), RETRY_BASE_DELAY="0.5", RETRY_MAX_DELAY="0.5",
                        MAX_RETRIES="50")
    post_and_leave(shield.port, upstream)
    settled(shield.port)
    [record] = records_of(path)
    assert (record["outcome"], record["status"]) == ("client_gone", 499)
    assert record["attempts"][0] == {"kind": "status", "status": 503, "seconds": record["attempts"][0]["seconds"]}


def test_no_prompt_answer_or_key_reaches_the_log(upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    echoed = json.dumps({"error": {"message": "Rate limited; your prompt was: " + PROMPT, "code": "rate_limit"}})
    upstream.plan(status(429, body=echoed.encode()), good(text=ANSWER))
    shield = make_proxy(upstream, USAGE_LOG=str(path), AZURE_API_KEY=UPSTREAM_KEY, PROXY_API_KEY=PROXY_KEY)
    auth = {"Authorization": "Bearer " + PROXY_KEY}
    code, _, body = request(shield.port, body=json.dumps({"model": "m", "input": PROMPT, "stream": True}).encode(),
                            headers=auth)
    assert code == 200 and ANSWER.encode() in body
    settled(shield.port, auth)
    text = path.read_text()
    assert len(text.splitlines()) == 1 and '"delivered"' in text
    for secret in (PROMPT, ANSWER, UPSTREAM_KEY, PROXY_KEY, "Rate limited"):
        assert secret not in text, secret


def test_a_key_sent_as_the_model_is_masked_in_the_log_in_stats_and_in_its_summary(upstream, make_proxy, tmp_path,
                                                                                  capsys):
    path = tmp_path / "usage.jsonl"
    upstream.plan(good())
    shield = make_proxy(upstream, USAGE_LOG=str(path), AZURE_API_KEY=UPSTREAM_KEY, PROXY_API_KEY=PROXY_KEY)
    auth = {"Authorization": "Bearer " + PROXY_KEY}
    body = json.dumps({"model": UPSTREAM_KEY, "input": "hi", "stream": True}).encode()
    assert request(shield.port, body=body, headers=auth)[0] == 200
    settled(shield.port, auth)
    [record] = records_of(path)
    assert record["model_asked"] == record["model_sent"] == "***"
    stats = request(shield.port, "GET", "/stats", body=None, headers=auth)[2].decode()
    assert UPSTREAM_KEY not in stats and '"***"' in stats
    code, out, _ = main_in_process(["--stats", str(path)], capsys)
    assert code == 0 and "***" in out and UPSTREAM_KEY not in out


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_log_that_cannot_be_opened_stops_start_up(environ, tmp_path, taken_port, capsys, where):
    path = str(tmp_path / "no-such-folder" / "usage.jsonl") if where == "missing folder" else str(tmp_path)
    environ.update({"AZURE_ENDPOINT": "http://127.0.0.1:9/v1", "PORT": str(taken_port), "USAGE_LOG": path})
    code, _, err = main_in_process(["--env-file", os.devnull], capsys)
    assert_one_line_error(code, err, "cannot open the usage log USAGE_LOG=" + path, "set USAGE_LOG")
    assert ("No such file or directory" if where == "missing folder" else "Is a directory") in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device every write to fails "
                                                           "with 'No space left on device' (Linux)")
def test_a_full_disk_is_one_warning_and_never_a_failed_request(upstream, make_proxy, caplog):
    caplog.set_level("INFO", logger="retry_shield")
    shield = make_proxy(upstream, USAGE_LOG="/dev/full")
    for _ in range(3):
        assert request(shield.port)[0] == 200
    settled(shield.port)
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "retry_shield.usage_log" and record.levelno >= logging.WARNING]
    assert warnings == ["cannot write the usage log /dev/full: No space left on device; requests go on, without "
                        "their usage lines until it can be written again"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (a POSIX system)")
def test_a_log_written_again_says_how_many_lines_were_lost(upstream, make_proxy, tmp_path, caplog):
    """A FIFO whose reader goes away and comes back: EPIPE meanwhile, then lines again."""
    caplog.set_level("INFO", logger="retry_shield")
    path = str(tmp_path / "usage.fifo")
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    shield = make_proxy(upstream, USAGE_LOG=path)

    def one_request():
        assert request(shield.port)[0] == 200
        settled(shield.port)

    one_request()
    assert json.loads(os.read(reader, 65536))["outcome"] == "delivered"
    os.close(reader)
    one_request()
    one_request()
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        one_request()
        assert json.loads(os.read(reader, 65536))["outcome"] == "delivered"
    finally:
        os.close(reader)
    messages = [(record.levelname, record.getMessage()) for record in caplog.records
                if record.name == "retry_shield.usage_log"]
    assert messages == [
        ("WARNING", "cannot write the usage log %s: Broken pipe; requests go on, without their usage lines until it "
                    "can be written again" % path),
        ("INFO", "the usage log %s is written again; 2 usage lines could not be written" % path)]


def test_requests_finishing_while_the_proxy_stops_have_their_lines(upstream, tmp_path):
    """The log closes after the drain: a request answered during it is logged."""
    path = tmp_path / "usage.jsonl"
    upstream.plan(good(delay=1.0))
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), USAGE_LOG=str(path))
    env.pop("PROXY_API_KEY", None)
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stderr=subprocess.PIPE, text=True)
    results = []
    try:
        wait_for_health(port)
        client = threading.Thread(target=lambda: results.append(request(port)))
        client.start()
        upstream.wait_attempts(1)
        process.send_signal(signal.SIGINT)
        client.join(30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert [result[0] for result in results] == [200], err
    assert [record["outcome"] for record in records_of(path)] == ["delivered"], err
    assert "usage log: %s" % path in err


def test_parallel_requests_give_one_whole_line_each(upstream, make_proxy, tmp_path):
    """Lines of different lengths from 32 threads at once: each parses, none is lost or doubled."""
    path = tmp_path / "usage.jsonl"
    shield = make_proxy(upstream, USAGE_LOG=str(path))
    models = ["model-%d-%s" % (number, "x" * (number * 37 % 500)) for number in range(256)]
    codes = []

    def client(names):
        for name in names:
            body = json.dumps({"model": name, "input": "hi", "stream": True}).encode()
            codes.append(request(shield.port, body=body)[0])

    threads = [threading.Thread(target=client, args=(models[start::32],)) for start in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert codes == [200] * 256
    settled(shield.port)
    assert sorted(record["model_asked"] for record in records_of(path)) == sorted(models)

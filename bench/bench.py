#!/usr/bin/env python3
"""Benchmark: the proxy beside a direct connection to the same fast local upstream.

One run starts a fake upstream (this script in ``--upstream`` mode, its own process,
serving prebuilt SSE answers from memory) and the real proxy (``python proxy.py``, its
own process), then measures side by side, as medians of repeated runs and as ratios,
because shared machines are noisy:

1. latency of a ~500 KB Responses stream (2,000 deltas) requested one after another
   on a keep-alive connection, direct and through the proxy; the upstream frames it in
   16 KB chunks (a fast buffered server), and, for reference, one chunk per SSE event
   (Azure's framing); and, also for reference, after a 250 KB request like a long Codex
   session's;
2. the proxy's CPU per MB relayed on a ~20 MB stream, and its peak memory growth as a
   multiple of the answer's size, in a fresh proxy process;
3. requests per second of 32 concurrent clients sending small streamed requests;
4. 1,000 clients held at once on an upstream that waits 2 s before answering.

Standard library only, Python 3.8+. CPU and peak memory come from /proc (Linux); on
other systems CPU comes from ``ps -o cputime`` (coarser) and peak memory is not shown.
Not a test: it prints one table (or JSON with --json) and exits 0. About a minute;
--quick takes about 20 s; --proxy PATH measures another copy of proxy.py (a candidate
change) against the same upstream.

    python bench/bench.py [--quick] [--json] [--proxy PATH]
"""

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(ROOT, "proxy.py")
REQUEST = json.dumps({"model": "gpt-bench", "input": "Write the program.", "stream": True}).encode()


def codex_request(turns=600):
    """A request the size of a long Codex session's (about 250 KB): the whole history is sent each turn."""
    message = {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "def f(x):\n    return x * 2  # " + "résumé text " * 20}]}
    return json.dumps({"model": "gpt-bench", "instructions": "You are Codex. " * 500, "input": [message] * turns,
                       "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}] * 10,
                       "stream": True}, ensure_ascii=False).encode("utf-8")


CODEX_REQUEST = codex_request()
# Every setting the proxy reads: none of the caller's may leak into the measured proxy.
PROXY_SETTINGS = ("AZURE_ENDPOINT", "AZURE_API_KEY", "HOST", "PORT", "FORCED_MODEL", "MAX_RETRIES",
                  "RETRY_BASE_DELAY", "RETRY_MAX_DELAY", "TOTAL_TIMEOUT", "CONNECT_TIMEOUT", "UPSTREAM_TIMEOUT",
                  "MAX_REQUEST_BYTES", "MAX_RESPONSE_BYTES", "LOG_LEVEL", "PROXY_API_KEY", "ALLOWED_ORIGINS",
                  "CLIENT_TIMEOUT", "UPSTREAM_API")

# Answers the fake upstream serves: name -> number of output_text deltas.
SIZES = {"500k": 2000, "20m": 80000, "small": 12}
FRAMINGS = ("16k", "event", "length")
CHAT_ANSWER = ("500k", "16k", "chat")  # the one chat answer served: the translation row's
CHUNK = 16384

# ---------------------------------------------------------------------------
# Realistic Responses streams: event lines, compact JSON, token-sized deltas
# ---------------------------------------------------------------------------

# Token-sized pieces of an agent's answer about code. " error" matters: a delta that ends
# in it puts ``error"`` in the stream, as real answers do, and the proxy must not stumble on it.
TOKENS = (" the", " function", " returns", " a", " list", " of", " error", " values", ",", " and", " we",
          " call", "(", "self", ")", ".", "\n", " if", " not", " items", ":", " raise", " ValueError",
          "(\"", "empty", "\")", " for", " each", " line", " in", " text", " return", " None", " #",
          " check", " result", " =", " {", "}", " path", "/", "to", " file", ".py", " `", "`")


def _event(name, data):
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def responses_stream(deltas):
    """A complete Responses stream with ``deltas`` output_text deltas, as Azure OpenAI sends it."""
    item_id = "msg_68a1f0c2d4e88190b5a7f3c0e2d1a9b80c4f5e6d7a8b9c0d"
    pieces = [TOKENS[(i * 7 + i // 5) % len(TOKENS)] for i in range(deltas)]
    text = "".join(pieces)
    response = {"id": "resp_68a1f0c1e6f48190a2b3c4d5e6f7a8b9", "object": "response", "created_at": 1755443393,
                "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
                "instructions": None, "max_output_tokens": None, "model": "gpt-5-codex", "output": [],
                "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": "medium"},
                "store": False, "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
                "truncation": "disabled", "usage": None}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    seq = [0]

    def ev(name, **fields):
        data = {"type": name, "sequence_number": seq[0]}
        data.update(fields)
        seq[0] += 1
        return _event(name, data)

    out = [ev("response.created", response=response), ev("response.in_progress", response=response),
           ev("response.output_item.added", output_index=0, item=item),
           ev("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part)]
    for index, piece in enumerate(pieces):
        out.append(ev("response.output_text.delta", item_id=item_id, output_index=0, content_index=0,
                      delta=piece, logprobs=[], obfuscation="kX9f2Qa7bZ3"[:max(2, 11 - len(piece))]))
    done_part = dict(part, text=text)
    done_item = dict(item, status="completed", content=[done_part])
    out += [ev("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text,
               logprobs=[]),
            ev("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=done_part),
            ev("response.output_item.done", output_index=0, item=done_item)]
    final = dict(response, status="completed", output=[done_item],
                 usage={"input_tokens": 1234, "input_tokens_details": {"cached_tokens": 1024},
                        "output_tokens": deltas, "output_tokens_details": {"reasoning_tokens": 64},
                        "total_tokens": 1234 + deltas})
    out.append(ev("response.completed", response=final))
    return b"".join(out)


def chat_stream(deltas):
    """The same answer as ``responses_stream(deltas)`` as a Chat Completions stream, for the translation row."""
    pieces = [TOKENS[(i * 7 + i // 5) % len(TOKENS)] for i in range(deltas)]
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1755443393, "model": "gpt-5-codex"}

    def chunk(delta, finish=None, **extra):
        data = dict(head, choices=[{"index": 0, "delta": delta, "finish_reason": finish}], **extra)
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": piece}) for piece in pieces]
    out.append(chunk({}, finish="stop"))
    usage = {"prompt_tokens": 1234, "completion_tokens": deltas, "total_tokens": 1234 + deltas,
             "prompt_tokens_details": {"cached_tokens": 1024}}
    out.append(b"data: " + json.dumps(dict(head, choices=[], usage=usage), separators=(",", ":")).encode()
               + b"\n\n")
    return b"".join(out) + b"data: [DONE]\n\n"


def wire(body, framing):
    """Status line, headers and framed body, ready for one write."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nx-request-id: bench\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "event":  # one chunk per SSE event, Azure's framing (sent here in one write, not paced)
        pieces = [piece + b"\n\n" for piece in body.split(b"\n\n") if piece]
    else:  # what a fast buffered server sends: ~16 KB chunks
        pieces = [body[start:start + CHUNK] for start in range(0, len(body), CHUNK)]
    return (head + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n")


# ---------------------------------------------------------------------------
# The fake upstream (run as its own process: python bench/bench.py --upstream)
# ---------------------------------------------------------------------------


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
    """POST ...?size=500k&framing=16k&delay=2: the prebuilt answer, in one write."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if query.get("delay"):
            time.sleep(float(query["delay"]))
        api = "chat" if self.path.partition("?")[0].endswith("/chat/completions") else "responses"
        self.wfile.write(self.server.answers[query.get("size", "small"), query.get("framing", "16k"), api])

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class UpstreamServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 4096  # 1,000 clients arrive at once

    def handle_error(self, request, client_address):
        pass  # clients that hang up are routine here


def serve_upstream():
    """Build the answers, listen on 127.0.0.1:0, print the port and sizes, serve until stdin closes."""
    bodies = {name: responses_stream(deltas) for name, deltas in SIZES.items()}
    server = UpstreamServer(("127.0.0.1", 0), UpstreamHandler)
    server.answers = {(name, framing, "responses"): wire(body, framing)
                      for name, body in bodies.items() for framing in FRAMINGS}
    chat = chat_stream(SIZES["500k"])
    server.answers[CHAT_ANSWER] = wire(chat, "16k")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"port": server.server_address[1],
                                 "sizes": dict({name: len(body) for name, body in bodies.items()},
                                               chat=len(chat))}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # the benchmark closes our stdin (or dies): stop
    return 0


# ---------------------------------------------------------------------------
# Processes and what the OS says about them
# ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_upstream():
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--upstream"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = process.stdout.readline()
    if not line:
        raise SystemExit("bench: the fake upstream did not start")
    info = json.loads(line.decode())
    return process, info["port"], info["sizes"]


def stop_process(process):
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Proxy:
    """``python proxy.py`` as a user runs it, on a free port, in front of the fake upstream."""

    def __init__(self, upstream_port, upstream_api="auto"):
        self.port = free_port()  # PORT=0 would work, but the port is only printed in the log
        env = {name: value for name, value in os.environ.items() if name not in PROXY_SETTINGS}
        env.update(AZURE_ENDPOINT="http://127.0.0.1:%d/v1" % upstream_port, HOST="127.0.0.1", PORT=str(self.port),
                   UPSTREAM_API=upstream_api)
        # Default settings (log level INFO included: one summary line per request, as users run it).
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, PROXY, "--env-file", os.devnull], env=env,
                                        stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT)
        self.pid = self.process.pid
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except (OSError, http.client.HTTPException):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.log.seek(0)
                raise SystemExit("bench: the proxy did not start:\n" + self.log.read().decode(errors="replace"))
            time.sleep(0.05)

    def stop(self):
        stop_process(self.process)
        self.log.close()


def cpu_seconds(pid):
    """CPU time (user + system, all threads) the OS has charged to process ``pid``.

    Linux: the sum of each thread's run time in /proc/PID/task/*/schedstat (nanoseconds),
    because /proc/PID/stat counts in 10 ms ticks, too coarse for one 20 MB answer. Only
    threads alive at both readings count: measure across a kept-alive connection, whose
    thread lives on. Elsewhere: ``ps -o cputime``.
    """
    try:
        total = 0
        for task in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, task)) as stat:
                    total += int(stat.read().split()[0])
            except OSError:
                pass  # the thread ended just now
        return total / 1e9
    except OSError:
        pass
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except OSError:  # no /proc (macOS): ps, in hundredths at best
        text = subprocess.check_output(["ps", "-o", "cputime=", "-p", str(pid)]).decode().strip()
        days, _, clock = text.rpartition("-")
        seconds = 0.0
        for part in clock.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds + 86400 * int(days or 0)


def peak_rss(pid):
    """VmHWM of process ``pid`` in bytes, or None where /proc is missing."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


class Client:
    """One keep-alive http.client connection; ``post`` returns seconds taken and the body."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, query, request=REQUEST, path="/v1/responses"):
        started = time.perf_counter()
        self.conn.request("POST", path + "?" + query, body=request,
                          headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"})
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if path.endswith("/chat/completions"):
            whole = body.endswith(b"data: [DONE]\n\n")
        else:
            whole = body.startswith(b"event: response.completed", body.rfind(b"\n\nevent: ") + 2)
        if response.status != 200 or not whole:
            raise SystemExit("bench: a bad answer (HTTP %d, %d bytes) for %s %s" % (response.status, len(body), path,
                                                                                   query))
        return elapsed, body

    def close(self):
        self.conn.close()


def latency(up_port, proxy_port, query, count, warmup, request=REQUEST):
    """Median ms direct and through the proxy, in interleaved rounds so drift hits both alike."""
    direct, proxied = Client(up_port), Client(proxy_port)
    times = {"direct": [], "proxy": []}
    sizes = set()
    for _ in range(warmup):
        direct.post(query, request)
        proxied.post(query, request)
    rounds = 10
    for _ in range(rounds):
        for name, client in (("direct", direct), ("proxy", proxied)):
            for _ in range(max(1, count // rounds)):
                elapsed, body = client.post(query, request)
                times[name].append(elapsed)
                sizes.add(len(body))
    direct.close()
    proxied.close()
    assert len(sizes) == 1, "direct and proxied answers differ in size: %s" % sorted(sizes)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}, len(times["direct"])


def translation_latency(plain_port, chat_port, count, warmup):
    """Median ms of the 500 KB chat answer passed to a chat client, and translated for a Responses client."""
    query = "size=500k&framing=16k"
    chat_request = json.dumps({"model": "gpt-bench", "stream": True,
                               "messages": [{"role": "user", "content": "Write the program."}]}).encode()
    passed, translated = Client(plain_port), Client(chat_port)
    clients = (("passed", lambda: passed.post(query, chat_request, "/v1/chat/completions")),
               ("translated", lambda: translated.post(query)))
    times = {"passed": [], "translated": []}
    for _ in range(warmup):
        for _, post in clients:
            post()
    rounds = 10
    for _ in range(rounds):
        for name, post in clients:
            for _ in range(max(1, count // rounds)):
                times[name].append(post()[0])
    passed.close()
    translated.close()
    return {name: statistics.median(values) * 1000 for name, values in times.items()}, len(times["passed"])


def cost_per_mb(up_port, size_bytes, runs):
    """The 20 MB stream through a fresh proxy: CPU ms per MB (median of runs), peak memory growth.

    A fresh process because VmHWM (the peak) only ever rises. Growth is the peak after
    all runs less the peak after a warm-up of small requests, as a multiple of the answer:
    a buffer that is copied while it grows, or kept twice, shows as x2.
    """
    proxy = Proxy(up_port)
    try:
        client = Client(proxy.port)
        for _ in range(20):
            client.post("size=small")  # warm-up: imports, threads, first buffers, the upstream connection
        baseline = peak_rss(proxy.pid)
        per_mb = []
        for _ in range(runs):
            before = cpu_seconds(proxy.pid)
            _, body = client.post("size=20m")
            per_mb.append((cpu_seconds(proxy.pid) - before) * 1000 / (size_bytes / 1e6))
            assert len(body) == size_bytes
        peak = peak_rss(proxy.pid)
        client.close()
    finally:
        proxy.stop()
    growth = None if baseline is None else (peak - baseline) / float(size_bytes)
    return {"ms_per_mb": statistics.median(per_mb), "runs": [round(value, 2) for value in per_mb],
            "memory_growth": growth, "baseline_mb": (baseline or 0) / 1e6}


def _throughput_client(port, start_at, stop_at, results):
    """One client process: small streamed requests on a keep-alive connection until ``stop_at``."""
    ok = errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    while time.time() < stop_at:
        try:
            conn.request("POST", "/v1/responses?size=small", body=REQUEST,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and b"response.completed" in body:
                ok += 1
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()
    results.put((ok, errors))


def throughput(port, clients, seconds):
    """Requests per second and errors of ``clients`` concurrent clients over ``seconds``.

    Each client is its own process, not a thread: the client is Python too, and 32
    threads in one process would share one GIL, so the test would measure the client.
    Processes spread over the cores like 32 independent agents would.
    """
    results = multiprocessing.Queue()
    start_at = time.time() + 1.0 + clients * 0.03  # after every process has started
    workers = [multiprocessing.Process(target=_throughput_client, args=(port, start_at, start_at + seconds, results))
               for _ in range(clients)]
    for worker in workers:
        worker.start()
    totals = [results.get(timeout=start_at - time.time() + seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(ok for ok, _ in totals) / float(seconds), sum(errors for _, errors in totals)


def held_clients(port, count, delay):
    """``count`` raw-socket clients at once on an upstream that waits ``delay`` s.

    Returns how many got a whole good answer, and the seconds from the first connection
    to the median and to the last answer.
    """
    raw = (b"POST /v1/responses?size=small&delay=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
           b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (str(delay).encode(), len(REQUEST), REQUEST))
    selector = selectors.DefaultSelector()
    answers, ended = {}, []
    started = time.monotonic()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(raw)
        sock.setblocking(False)
        answers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
    deadline = started + delay + 60
    while len(ended) < count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if data:
                answers[key.fileobj] += data
            else:
                selector.unregister(key.fileobj)
                ended.append(time.monotonic() - started)
    for sock in answers:
        sock.close()
    selector.close()
    good = sum(data.startswith(b"HTTP/1.1 200") and b"event: response.completed" in data for data in answers.values())
    ended.sort()
    return good, ended[len(ended) // 2] if ended else float("nan"), ended[-1] if ended else float("nan")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%d cores, %s, Python %s, %s" % (os.cpu_count() or 0, model, platform.python_version(), platform.system())


def raise_open_files(needed):
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the proxy and upstream inherit it


def verdict(ok):
    return "pass" if ok else "FAIL"


def run(quick):
    count, warmup, runs, seconds, held_runs = (60, 5, 3, 2, 1) if quick else (200, 20, 8, 5, 3)
    rows = []
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "quick": quick}
    upstream, up_port, sizes = start_upstream()
    proxy = None
    try:
        proxy = Proxy(up_port)
        for framing, label, target, request in (
                ("16k", "16 KB chunks", 1.0, REQUEST), ("event", "a chunk per event", None, REQUEST),
                ("16k", "%d KB request" % (len(CODEX_REQUEST) // 1000), None, CODEX_REQUEST)):
            medians, done = latency(up_port, proxy.port, "size=500k&framing=" + framing, count, warmup, request)
            added = medians["proxy"] - medians["direct"]
            rows.append(("latency, %d KB stream, %s (median ms of %d)" % (sizes["500k"] // 1000, label, done),
                         "%.2f" % medians["direct"], "%.2f" % medians["proxy"],
                         "%+.2f ms, x%.2f" % (added, medians["proxy"] / medians["direct"]),
                         "<= +1 ms" if target else "(reference)", verdict(added <= target) if target else ""))
            key = "latency_" + framing + ("_big_request" if request is CODEX_REQUEST else "")
            results[key] = dict(medians, added_ms=added, requests=done)

        chat_proxy = Proxy(up_port, upstream_api="chat")
        try:
            medians, done = translation_latency(proxy.port, chat_proxy.port, count, warmup)
        finally:
            chat_proxy.stop()
        added = medians["translated"] - medians["passed"]
        rows.append(("latency, the same answer as a %d KB chat stream, passed / translated (median ms of %d)"
                     % (sizes["chat"] // 1000, done), "%.2f" % medians["passed"], "%.2f" % medians["translated"],
                     "%+.2f ms, x%.2f" % (added, medians["translated"] / medians["passed"]), "<= +2 ms",
                     verdict(added <= 2.0)))
        results["translation"] = dict(medians, added_ms=added, requests=done)

        cost = cost_per_mb(up_port, sizes["20m"], runs)
        results["cost"] = cost
        rows.append(("proxy CPU per MB, %.1f MB stream (median of %d)" % (sizes["20m"] / 1e6, runs), "",
                     "%.2f ms" % cost["ms_per_mb"], "", "<= 2 ms", verdict(cost["ms_per_mb"] <= 2.0)))
        growth = cost["memory_growth"]
        rows.append(("proxy peak memory growth / answer size", "", "n/a" if growth is None else "x%.2f" % growth, "",
                     "<= x1.3", "" if growth is None else verdict(growth <= 1.3)))

        rps = {}
        for name, port in (("direct", up_port), ("proxy", proxy.port)):
            rps[name] = throughput(port, 32, seconds)
        ratio = rps["proxy"][0] / rps["direct"][0] if rps["direct"][0] else 0.0
        results["throughput"] = {"direct_rps": rps["direct"][0], "direct_errors": rps["direct"][1],
                                 "proxy_rps": rps["proxy"][0], "proxy_errors": rps["proxy"][1], "ratio": ratio}
        rows.append(("throughput, 32 client processes, %d s (req/s; errors)" % seconds,
                     "%.0f; %d" % rps["direct"], "%.0f; %d" % rps["proxy"], "x%.2f" % ratio,
                     ">= x0.7, 0 errors", verdict(ratio >= 0.7 and rps["proxy"][1] == 0)))

        held = {}
        for name, port in (("direct", up_port), ("proxy", proxy.port)):
            tries = sorted((held_clients(port, 1000, 2) for _ in range(held_runs)), key=lambda run: run[2])
            held[name] = tries[len(tries) // 2]  # the run with the median last answer
        results["held"] = {name: {"answered": good, "median_s": median, "last_s": last}
                           for name, (good, median, last) in held.items()}
        late = held["proxy"][2] - held["direct"][2]
        rows.append(("1,000 clients at once, upstream waits 2 s (answered; median/last s, median of %d)" % held_runs,
                     "%d; %.2f/%.2f" % held["direct"], "%d; %.2f/%.2f" % held["proxy"], "%+.2f s last" % late,
                     "1000; last <= direct +0.5 s", verdict(held["proxy"][0] == 1000 and late <= 0.5)))
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stdin.close()
        stop_process(upstream)
    results["rows"] = rows
    return results


def print_table(results):
    print("retry-shield benchmark, %s, %s%s" % (results["date"], results["machine"],
                                                 ", --quick" if results["quick"] else ""))
    header = ("metric", "direct", "proxy", "added / ratio", "target", "")
    rows = [header] + [tuple(row) for row in results["rows"]]
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(argv=None):
    global PROXY
    parser = argparse.ArgumentParser(description="The proxy beside a direct connection to a fast local upstream.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats: under a minute")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--proxy", metavar="PATH", default=PROXY,
                        help="the proxy script to measure (default: this repository's proxy.py)")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)  # the fake upstream's process
    args = parser.parse_args(argv)
    if args.upstream:
        return serve_upstream()
    PROXY = os.path.abspath(args.proxy)
    raise_open_files(4096)
    results = run(args.quick)
    results["proxy"] = os.path.relpath(PROXY, ROOT)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

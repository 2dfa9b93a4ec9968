"""Usage figures: the aggregator on a known log, --stats through main, and GET /stats through the real proxy."""

import json
import math
import os
import random
import time

import pytest

from retry_shield.stats import (MAX_NAMES, OTHER, RECENT_MINUTES, WORST_MINUTES, Stats, duration, parse_record,
                                parse_since, read_log, render)
from retry_shield.usage import iso_time
from tests.fake_upstream import good, status
from tests.helpers import assert_one_line_error, main_in_process, request

PROXY_KEY = "proxy-KEY-44aa19cd02"


def record(when, outcome, attempts, retries=0, waited=0.0, seconds=1.0, model="gpt-5.5", tokens=None, code=200):
    """A usage record as the proxy writes it (``usage.usage_record``), at ``when`` (an ISO time)."""
    return {"time": when, "path": "/v1/responses", "client_api": "responses", "upstream_api": "chat",
            "model_asked": model, "model_sent": model, "client_stream": True, "status": code, "outcome": outcome,
            "attempts": [{"kind": kind, "status": status_code, "seconds": 0.1} for kind, status_code in attempts],
            "retries": retries, "seconds": seconds, "waited": waited, "bytes": 100, "tokens": tokens}


def at(clock):
    return "2026-11-30T%s.000Z" % clock


def tokens(into, out, cached=None, reasoning=None):
    return {"input": into, "output": out, "cached": cached, "reasoning": reasoning}


KNOWN = [
    record(at("08:14:05"), "delivered", [("status", 429), ("ok", 200)], 1, 2.0, 3.5, tokens=tokens(100, 20, 50, 5)),
    record(at("08:14:40"), "delivered", [("cut", 200), ("status", 503), ("ok", 200)], 2, 3.0, 7.25,
           tokens=tokens(200, 30, 0, 10)),
    record(at("08:15:10"), "gave_up", [("status", 429)] * 3, 2, 4.0, 6.0, code=429),
    record(at("08:20:00"), "delivered", [("ok", 200)], seconds=1.5, model="dep-mini", tokens=tokens(10, 5)),
    record(at("09:01:00"), "client_gone", [("timeout", None), ("client_gone", None)], 1, 0.5, 12.0,
           model="dep-mini", code=499),
    record(at("09:02:00"), "final", [("ok", 400)], seconds=0.25, model="dep-mini", code=400),
]
NOT_RECORDS = [b"not json at all", b'{"foo": 1}', b'{"time": "2026-11-30T08:1', b"\xff\xfe", b"[1, 2]",
               json.dumps(dict(KNOWN[0], seconds="long")).encode(),
               json.dumps(dict(KNOWN[0], time="yesterday")).encode(),
               json.dumps(dict(KNOWN[0])).encode().replace(b'"seconds": ', b'"seconds": 1e400, "was": '),
               json.dumps(dict(KNOWN[0])).encode().replace(b'"waited": ', b'"waited": Infinity, "was": '),
               b"[" * 100000 + b"]" * 100000]
KNOWN_FIGURES = {
    "requests": 6,
    "outcomes": {"delivered": 3, "final": 1, "gave_up": 1, "stopped": 0, "client_gone": 1},
    "retries": 6,
    "failed_attempts": {"http_429": {"failed": 4, "absorbed": 1}, "cut": {"failed": 1, "absorbed": 1},
                        "http_503": {"failed": 1, "absorbed": 1}, "timeout": {"failed": 1, "absorbed": 0}},
    "worst_minutes": [{"minute": "2026-11-30T08:14", "failed_attempts": 3, "requests": 2},
                      {"minute": "2026-11-30T08:15", "failed_attempts": 3, "requests": 1},
                      {"minute": "2026-11-30T09:01", "failed_attempts": 1, "requests": 1}],
    "tokens_by_model": {"dep-mini": {"requests": 3, "input": 10, "cached": 0, "output": 5, "reasoning": 0},
                        "gpt-5.5": {"requests": 3, "input": 300, "cached": 50, "output": 50, "reasoning": 15}},
    "seconds": {"median": 3.5, "p95": 12.0},
    "backoff_seconds": 9.5,
    "first": "2026-11-30T08:14:05.000Z",
    "last": "2026-11-30T09:02:00.000Z",
}
KNOWN_TEXT = """\
usage.jsonl: 6 requests, 2026-11-30 08:14 to 09:02 UTC
skipped 10 lines that are not usage records

requests                       6
  delivered                    3
  final answer passed on       1
  given up                     1
  client gone                  1
retries                        6
time in backoff           9.50 s
total time, median        3.50 s
total time, p95           12.0 s

failed attempts  failed  absorbed
  http_429            4         1
  cut                 1         1
  http_503            1         1
  timeout             1         0

worst minutes (UTC)  failed attempts  requests
  2026-11-30 08:14                 3         2
  2026-11-30 08:15                 3         1
  2026-11-30 09:01                 1         1

tokens by model  requests  input  cached  output  reasoning
  dep-mini              3     10       0       5          0
  gpt-5.5               3    300      50      50         15
"""


def known_log():
    """The known records, with torn and foreign lines (and a blank one) between them."""
    lines = [json.dumps(line).encode() for line in KNOWN]
    for index, foreign in enumerate(NOT_RECORDS):
        lines.insert(2 * index + 1, foreign)
    return lines[:4] + [b"  "] + lines[4:]


# -- the aggregator --------------------------------------------------------------


def test_the_figures_of_a_known_log():
    stats, skipped = read_log(known_log())
    assert skipped == len(NOT_RECORDS)
    assert stats.figures() == KNOWN_FIGURES


def test_the_summary_of_a_known_log():
    stats, skipped = read_log(known_log())
    assert render(stats.figures(), "usage.jsonl", skipped) == KNOWN_TEXT


def test_one_skipped_line_is_said_in_the_singular():
    stats, skipped = read_log([b"{", json.dumps(KNOWN[0]).encode()])
    assert render(stats.figures(), "usage.jsonl", skipped).splitlines()[1] == (
        "skipped 1 line that is not a usage record")


def test_the_summary_of_an_empty_log():
    stats, skipped = read_log([])
    assert render(stats.figures(), "usage.jsonl", skipped) == (
        "usage.jsonl: 0 requests\n\nrequests            0\nretries             0\ntime in backoff  0 ms\n")
    assert stats.figures()["seconds"] == {"median": None, "p95": None}


@pytest.mark.parametrize("line", NOT_RECORDS)
def test_torn_and_foreign_lines_are_not_records(line):
    assert parse_record(line) is None


def test_records_of_the_proxy_are_records():
    from retry_shield.shield import AttemptRecord, Exchange
    from retry_shield.usage import usage_record
    exchange = Exchange(method="POST", path="/v1/responses", client_protocol="responses", upstream_protocol="chat",
                        endpoint="https://x.test/v1", model_asked="a", model_sent="b", client_streamed=False,
                        started=0.0, attempts=(AttemptRecord(1, "status", 429, "slow down", 0.1),), retries=1,
                        outcome="gave_up", status=429, seconds=0.5, waited=0.2)
    line = json.dumps(usage_record(exchange, 0.0)).encode()
    assert parse_record(line) == json.loads(line)


def test_since_keeps_the_records_from_then():
    stats, _ = read_log([json.dumps(line).encode() for line in KNOWN], since=at("08:20:00"))
    assert (stats.requests, stats.first, stats.last) == (3, at("08:20:00"), at("09:02:00"))


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                           ("1.5h", 5400)])
def test_since_ages(text, seconds):
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "24x", "-1h", "1 day"])
def test_since_refuses_what_is_no_age(text):
    with pytest.raises(ValueError):
        parse_since(text)


@pytest.mark.parametrize("seconds, text", [(0.0004, "0 ms"), (0.84, "840 ms"), (2.345, "2.35 s"), (12.34, "12.3 s"),
                                           (245, "4 m 05 s"), (7800, "2 h 10 m")])
def test_durations(seconds, text):
    assert duration(seconds) == text


def test_quantiles_are_within_a_bin_of_the_exact_ones():
    rng = random.Random(14)
    values = [rng.lognormvariate(1.0, 1.5) for _ in range(5000)]
    stats = Stats()
    for index, seconds in enumerate(values):
        stats.add(record(iso_time(1.8e9 + index), "delivered", [("ok", 200)], seconds=seconds))
    ordered = sorted(values)
    for fraction in (0.5, 0.95):
        exact = ordered[math.ceil(fraction * len(values)) - 1]
        assert stats.quantile(fraction) == pytest.approx(exact, rel=0.024)


def test_memory_stays_bounded_and_the_worst_minutes_exact_over_a_long_run():
    """Two weeks of one request a minute, failures at random: few minutes are kept, the worst are right."""
    rng = random.Random(7)
    stats = Stats()
    failures = {}
    for minute in range(20000):
        when = iso_time(1.8e9 + 60 * minute)
        failed = rng.choice([0, 0, 0, 1, 2, rng.randrange(20)])
        failures[when[:16]] = failed
        stats.add(record(when, "delivered", [("status", 429)] * failed + [("ok", 200)], retries=failed,
                         model="model-%d" % (minute % 200)))
        assert len(stats.minutes) <= 2 * (RECENT_MINUTES + WORST_MINUTES)
    worst = sorted((minute for minute in failures if failures[minute]),
                   key=lambda minute: (-failures[minute], minute))[:WORST_MINUTES]
    assert [entry["minute"] for entry in stats.figures()["worst_minutes"]] == worst
    models = stats.figures()["tokens_by_model"]
    assert len(models) == MAX_NAMES + 1 and models[OTHER]["requests"] == 20000 - MAX_NAMES * 100
    assert len(stats.counts) == len(stats.sums) == 800


# -- --stats ---------------------------------------------------------------------


@pytest.fixture
def known_file(tmp_path):
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b"\n".join(known_log()) + b"\n")
    return path


def test_stats_prints_the_summary_of_a_file(environ, known_file, capsys):
    code, out, err = main_in_process(["--env-file", os.devnull, "--stats", str(known_file)], capsys)
    assert (code, err) == (0, "")
    assert out == KNOWN_TEXT.replace("usage.jsonl", str(known_file), 1)


def test_stats_reads_usage_log_by_default(environ, known_file, capsys):
    environ["USAGE_LOG"] = str(known_file)
    code, out, _ = main_in_process(["--env-file", os.devnull, "--stats"], capsys)
    assert code == 0 and out.startswith("%s: 6 requests" % known_file)


def test_stats_since_counts_only_the_recent_requests(environ, tmp_path, capsys):
    now = time.time()
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(json.dumps(record(iso_time(now - hours * 3600), "delivered", [("ok", 200)])) + "\n"
                            for hours in (30, 25, 2, 1)))
    code, out, _ = main_in_process(["--env-file", os.devnull, "--stats", str(path), "--since", "24h"], capsys)
    assert code == 0 and out.startswith("%s, the last 24h: 2 requests, " % path)


@pytest.mark.parametrize("argv, settings, texts", [
    (["--stats"], {}, ("--stats needs a usage log", "USAGE_LOG")),
    (["--stats", "MISSING"], {}, ("cannot read the usage log MISSING", "No such file or directory")),
    (["--stats", "FOLDER"], {}, ("cannot read the usage log FOLDER", "Is a directory")),
    (["--stats", "FILE", "--since", "yesterday"], {}, ("--since 'yesterday' is not an age", "24h")),
    (["--since", "24h"], {"USAGE_LOG": "FILE"}, ("--since goes with --stats",)),
    (["--check", "--stats", "FILE"], {}, ("--check and --stats each run alone",)),
])
def test_stats_mistakes_are_one_line(environ, known_file, capsys, argv, settings, texts):
    names = {"MISSING": str(known_file.parent / "missing.jsonl"), "FOLDER": str(known_file.parent),
             "FILE": str(known_file)}
    environ.update({key: names.get(value, value) for key, value in settings.items()})
    argv = [names.get(arg, arg) for arg in argv]
    code, out, err = main_in_process(["--env-file", os.devnull] + argv, capsys)
    assert out == ""
    for name, value in names.items():
        texts = [text.replace(name, value) for text in texts]
    assert_one_line_error(code, err, *texts)


# -- GET /stats --------------------------------------------------------------------


def stats_of(port, headers=None):
    code, _, body = request(port, "GET", "/stats", body=None, headers=headers)
    assert code == 200, body
    return json.loads(body)


def test_stats_route_gives_the_figures_since_start(upstream, make_proxy, tmp_path):
    path = tmp_path / "usage.jsonl"
    upstream.plan(status(429), good())
    shield = make_proxy(upstream, USAGE_LOG=str(path))
    before = stats_of(shield.port)
    assert before["requests"] == 0 and before["seconds"] == {"median": None, "p95": None}
    assert request(shield.port)[0] == 200
    figures = stats_of(shield.port)
    assert figures["since"] == iso_time(shield.server.started_at) and figures["uptime_s"] >= 0
    assert (figures["requests"], figures["retries"], figures["outcomes"]["delivered"]) == (1, 1, 1)
    assert figures["failed_attempts"] == {"http_429": {"failed": 1, "absorbed": 1}}
    assert figures["tokens_by_model"] == {"m": {"requests": 1, "input": 11, "cached": 0, "output": 22,
                                                "reasoning": 0}}
    assert [minute["failed_attempts"] for minute in figures["worst_minutes"]] == [1]
    # The same figures as --stats on the usage log of the same requests (its time is when the answer left).
    deadline = time.monotonic() + 10
    while shield.server.active:  # each request writes its usage line before it counts as done
        assert time.monotonic() < deadline
        time.sleep(0.02)
    from_log = read_log(path.read_bytes().splitlines())[0].figures()
    for name in ("since", "uptime_s", "first", "last", "worst_minutes"):
        figures.pop(name)
        from_log.pop(name, None)
    assert figures == from_log


def test_stats_route_needs_the_proxy_key_as_every_route_but_health(upstream, make_proxy):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_KEY)
    code, _, body = request(shield.port, "GET", "/stats", body=None)
    assert code == 401 and json.loads(body)["error"]["code"] == "invalid_proxy_key"
    assert stats_of(shield.port, {"Authorization": "Bearer " + PROXY_KEY})["requests"] == 0
    assert PROXY_KEY not in json.dumps(stats_of(shield.port, {"api-key": PROXY_KEY}))


@pytest.mark.parametrize("headers, host, code", [
    ({"Origin": "http://evil.test"}, None, "origin_not_allowed"),
    ({}, "evil.test:8888", "host_not_allowed"),
])
def test_stats_route_refuses_web_pages_and_rebound_names(shield, headers, host, code):
    status_code, _, body = request(shield.port, "GET", "/stats", body=None, headers=headers, host=host)
    assert status_code == 403 and json.loads(body)["error"]["code"] == code


def test_stats_route_takes_only_get(shield):
    code, headers, _ = request(shield.port, "POST", "/stats", body=b"{}")
    assert code == 405 and headers["allow"] == "GET"

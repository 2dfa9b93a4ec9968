"""The status page: what it keeps and draws (as data), what it serves, to whom, and that Chromium renders it."""

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from retry_shield.recent import Minute, Recent
from retry_shield.status_page import attempt_label, chart, duration, render
from tests.fake_upstream import cut, good, status
from tests.helpers import post, request

SECRET = "sk-upstream-SECRET-0123456789"
PROXY_SECRET = "proxy-SECRET-abcdef"
PROMPT = "PROMPT-only-the-client-knows-4711"
ANSWER = "ANSWER-only-the-upstream-knows-0815"
HEALTH = {"status": "ok", "service": "retry-shield", "version": "1.0.0", "pid": 1, "port": 8000, "uptime_s": 3725.4,
          "upstream": "example.openai.azure.com", "upstream_api": "auto", "apis": {"responses->chat": 3},
          "requests": 3, "retries": 2, "gave_up": 1, "in_flight": 0}
NOW = 1_800_000_000.0  # a minute's start: 30,000,000 minutes


def record(**fields):
    base = {"time": "2027-01-15T08:00:00.000Z", "path": "/v1/responses", "client_api": "responses",
            "upstream_api": "chat", "model_asked": "gpt-5.5", "model_sent": "dep-1", "client_stream": True,
            "status": 200, "outcome": "delivered",
            "attempts": [{"kind": "status", "status": 429, "seconds": 0.1}, {"kind": "cut", "status": None,
                                                                            "seconds": 1.0},
                         {"kind": "ok", "status": 200, "seconds": 2.0}],
            "retries": 2, "seconds": 4.5, "waited": 1.25, "bytes": 100,
            "tokens": {"input": 1200, "output": 34, "cached": 1000, "reasoning": 8}}
    base.update(fields)
    return base


def basic(password, user="me"):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def get(port, path="/status", headers=None, method="GET", host=None):
    return request(port, method, path, body=None, headers=headers, host=host)


# -- what is kept (as data) ------------------------------------------------------


def test_recent_keeps_the_last_50_records_newest_first():
    recent = Recent()
    for number in range(60):
        recent.add(record(bytes=number), NOW + number)
    kept = recent.records()
    assert [item["bytes"] for item in kept] == list(range(59, 9, -1))


def test_recent_counts_requests_and_retries_per_minute_for_the_last_hour():
    recent = Recent()
    recent.add(record(retries=0), NOW - 3600)  # 60 minutes ago: out of the hour by the time of the last minute
    recent.add(record(retries=2), NOW - 59 * 60 + 30)
    recent.add(record(retries=1), NOW + 5)
    recent.add(record(retries=0), NOW + 59)
    series = recent.per_minute(NOW + 59)
    assert len(series) == 60
    assert series[0] == Minute(NOW - 59 * 60, 1, 2)
    assert series[-1] == Minute(NOW, 2, 1)
    assert sum(minute.requests for minute in series) == 3 and sum(minute.retries for minute in series) == 3


def test_recent_stays_bounded_and_a_clock_set_back_counts_in_the_newest_minute():
    recent = Recent()
    for minute in range(500):
        recent.add(record(), NOW + minute * 60)
    assert len(recent._buckets) == 60 and len(recent.records()) == 50
    recent.add(record(retries=3), NOW)  # the wall clock stepped back 499 minutes
    assert recent.per_minute(NOW + 499 * 60)[-1] == Minute(NOW + 499 * 60, 2, 5)


# -- what is drawn (as data) -----------------------------------------------------


def bars(svg, css):
    return [(float(x), float(height)) for x, height in
            re.findall(r'<rect class="%s" x="([\d.]+)" y="[\d.]+" width="[\d.]+" height="([\d.]+)"/>' % css, svg)]


def test_chart_draws_one_bar_per_busy_minute_scaled_to_a_round_top():
    minutes = [Minute(NOW + 60 * index, 0, 0) for index in range(60)]
    minutes[0] = Minute(NOW, 4, 1)
    minutes[59] = Minute(NOW + 59 * 60, 2, 0)
    svg = chart(minutes)
    requests, retries = bars(svg, "req"), bars(svg, "ret")
    # The top is 5 (4 rounded up to 1, 2 or 5 times a power of ten); the plot is 164 units high.
    assert [height for _, height in requests] == [131.2, 65.6]
    assert [height for _, height in retries] == [32.8]
    assert requests[0][0] < requests[1][0] and requests[0][0] < retries[0][0]
    assert ">5</text>" in svg and "08:00 UTC: 4 requests, 1 retries" in svg and ">now</text>" in svg


def test_an_empty_chart_says_so():
    svg = chart([Minute(NOW + 60 * index, 0, 0) for index in range(60)])
    assert "<rect" not in svg and "no requests in the last hour" in svg


def test_attempt_labels_and_durations():
    assert [attempt_label(item) for item in (
        {"kind": "ok", "status": 200}, {"kind": "ok", "status": 400}, {"kind": "status", "status": 503},
        {"kind": "cut", "status": None}, {"kind": "client_gone", "status": None})] == [
        "ok", "400", "503", "cut", "client gone"]
    assert (duration(42.9), duration(729), duration(3725.4)) == ("42 s", "12 min 09 s", "1 h 02 min")


def test_render_shows_counters_requests_and_attempts():
    page = render(HEALTH, [record()], [Minute(NOW, 1, 2)], NOW)
    assert "served by" not in page  # one endpoint: the column would say the same on every row
    assert page.startswith("<!DOCTYPE html>") and '<meta http-equiv="refresh" content="10">' in page
    assert "example.openai.azure.com" in page and "1 h 02 min" in page and "responses \u2192 chat: 3" in page
    for label, value in (("requests", 3), ("retries", 2), ("gave up", 1), ("in flight", 0)):
        assert '<div class="n">%d</div><div class="l">%s</div>' % (value, label) in page
    row = re.search(r"<tbody><tr>(.*?)</tr>", page).group(1)
    cells = [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    assert cells == ["08:00:00", "/v1/responses", "responses \u2192 chat", "gpt-5.5 \u2192 dep-1", "200",
                     "delivered", "429 &rarr; cut &rarr; ok", "4.50", "1.25", "1200 / 34"]


def test_render_shows_the_figures_of_stats():
    figures = {"requests": 3, "seconds": {"median": 1.5, "p95": 4.25}, "backoff_seconds": 2.04,
               "failed_attempts": {"http_429": {"failed": 2, "absorbed": 2}, "cut": {"failed": 1, "absorbed": 0}}}
    page = render(HEALTH, [record()], [], NOW, figures=figures)
    assert ("total time: median 1.50 s, p95 4.25 s &middot; time in backoff: 2.0 s &middot; "
            "failed attempts (absorbed): http_429 2 (2), cut 1 (0)") in page
    assert "total time" not in render(HEALTH, [], [], NOW, figures=dict(figures, requests=0))


def test_render_lists_the_endpoints_only_with_fallbacks_and_the_queue_only_when_it_waits():
    one = [{"host": "east.example.test", "served": 3, "failed": 1, "cooling_down_s": 0}]
    page = render(dict(HEALTH, endpoints=one, queued=0), [], [], NOW)
    assert "Endpoints" not in page and "waiting their turn" not in page
    two = one + [{"name": "FALLBACK_1", "host": "<west>:8443", "served": 1, "failed": 0, "cooling_down_s": 42.05}]
    page = render(dict(HEALTH, endpoints=[dict(one[0], cooling_down_s=118.0)] + two[1:], queued=4), [], [], NOW)
    rows = re.search(r"<h2>Endpoints</h2>.*?<tbody>(.*?)</tbody>", page).group(1)
    cells = [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
             for row in re.findall(r"<tr>(.*?)</tr>", rows)]
    assert cells == [["primary", "east.example.test", "3", "1", "118.0 s"],
                     ["FALLBACK_1", "&lt;west&gt;:8443", "1", "0", "42.0 s"]]
    assert '<div class="n">4</div><div class="l">waiting their turn</div>' in page


def test_render_escapes_everything_a_client_or_upstream_chose():
    hostile = '<script>alert("x")</script>'
    page = render(dict(HEALTH, upstream=hostile, apis={hostile: 1}),
                  [record(model_asked=hostile, model_sent=hostile, path=hostile,
                          attempts=[{"kind": hostile, "status": None}], outcome=hostile)], [], NOW)
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_render_is_self_contained_and_has_an_empty_state():
    page = render(dict(HEALTH, requests=0, retries=0, gave_up=0, apis={}), [],
                  [Minute(NOW + 60 * index, 0, 0) for index in range(60)], NOW)
    assert "No requests since the proxy started." in page and "none yet" in page
    for outside in ("<script", "src=", "href=", "<link", "http://", "https://", "url("):
        assert outside not in page


# -- what is served, and to whom --------------------------------------------------


def test_the_page_after_a_retried_request_shows_its_attempts(upstream, make_proxy):
    shield = make_proxy(upstream)
    upstream.plan(status(429), cut(300), good())
    assert post(shield.port, body={"model": "gpt-test", "input": "hi", "stream": True})[0] == 200
    code, headers, body = get(shield.port)
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"] and headers["cache-control"] == "no-store"
    page = body.decode("utf-8")
    row = re.search(r"<tbody><tr>(.*?)</tr>", page).group(1)
    assert "gpt-test" in row and "delivered" in row
    assert re.sub(r"<[^>]+>", "", row).count("429 &rarr; cut &rarr; ok") == 1
    assert '<div class="n">2</div><div class="l">retries</div>' in page
    assert len(re.findall(r'<rect class="req"', page)) == 1
    for path in ("/", "/status/"):
        assert get(shield.port, path)[2].count(b"429") == page.count("429")
    code, headers, body = get(shield.port, method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 1000


def test_the_page_shows_each_endpoint_and_the_figures_since_start(upstream, make_upstream, make_proxy):
    fallback = make_upstream()
    upstream.plan(status(429, headers={"Retry-After": "120"}))
    fallback.plan(good())
    shield = make_proxy(upstream, FALLBACK_1_ENDPOINT=fallback.url + "/v1")
    assert post(shield.port, body={"model": "gpt-5.5", "input": "hi", "stream": True})[0] == 200
    code, _, body = get(shield.port)
    page = body.decode()
    assert code == 200 and "<h2>Endpoints</h2>" in page
    assert "127.0.0.1:%d" % upstream.port in page and "127.0.0.1:%d" % fallback.port in page
    assert "failed attempts (absorbed): http_429 1 (1)" in page
    row = re.search(r"<h2>Last request</h2>.*?<tbody><tr>(.*?)</tr>", page).group(1)
    served = '<td title="tried: 127.0.0.1:%d, 127.0.0.1:%d">127.0.0.1:%d</td>' % (
        upstream.port, fallback.port, fallback.port)
    assert "<th>served by</th>" in page and served in row


def test_the_page_never_shows_a_prompt_an_answer_or_a_key(upstream, make_proxy):
    shield = make_proxy(upstream, AZURE_API_KEY=SECRET, PROXY_API_KEY=PROXY_SECRET)
    upstream.plan(status(503), good(text=ANSWER))
    auth = {"Authorization": "Bearer " + PROXY_SECRET}
    code, _, answer = post(shield.port, body={"model": "<script>alert(1)</script>", "input": PROMPT,
                                              "instructions": PROMPT, "stream": True}, headers=auth)
    assert code == 200 and ANSWER.encode() in answer
    assert post(shield.port, body={"model": SECRET, "input": PROMPT, "stream": True}, headers=auth)[0] == 200
    code, _, body = get(shield.port, headers=auth)
    page = body.decode("utf-8")
    assert code == 200 and page.count("<tr>") == 3  # the header row and two requests
    for secret in (PROMPT, ANSWER, SECRET, PROXY_SECRET, "<script"):
        assert secret not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "***" in page


def test_the_page_asks_a_browser_for_the_proxy_key_as_a_password(upstream, make_proxy):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_SECRET)
    for headers in ({}, {"Authorization": basic("wrong")}, {"Authorization": "Basic !!not base64"}):
        code, answer_headers, body = get(shield.port, headers=headers)
        assert code == 401 and json.loads(body)["error"]["code"] == "invalid_proxy_key"
        assert answer_headers["www-authenticate"].startswith('Basic realm="retry-shield status page"')
        assert PROXY_SECRET.encode() not in body
    assert get(shield.port, headers={"Authorization": basic(PROXY_SECRET)})[0] == 200
    assert get(shield.port, "/", headers={"Authorization": basic(PROXY_SECRET, user="")})[0] == 200
    assert get(shield.port, headers={"Authorization": "Bearer " + PROXY_SECRET})[0] == 200
    assert get(shield.port, headers={"api-key": PROXY_SECRET})[0] == 200


def test_the_password_opens_only_the_page(upstream, make_proxy, caplog):
    shield = make_proxy(upstream, PROXY_API_KEY=PROXY_SECRET)
    code, headers, _ = post(shield.port, headers={"Authorization": basic(PROXY_SECRET)})
    assert code == 401 and "www-authenticate" not in headers and upstream.attempts == 0
    assert get(shield.port, "/v1/models", headers={"Authorization": basic(PROXY_SECRET)})[0] == 401
    caplog.clear()
    # The icon a browser asks for by itself, with the page's password: its 404, not a refusal in the log.
    assert get(shield.port, "/favicon.ico", headers={"Authorization": basic(PROXY_SECRET)})[0] == 404
    assert not [line for line in caplog.messages if "refused" in line]


def test_the_page_is_open_on_loopback_without_a_proxy_key(upstream, make_proxy):
    assert get(make_proxy(upstream).port)[0] == 200


@pytest.mark.parametrize("headers, host", [({"Origin": "https://evil.example"}, None), ({}, "evil.example:8000")])
def test_the_page_refuses_other_web_pages_and_rebound_host_names(upstream, make_proxy, headers, host):
    shield = make_proxy(upstream)
    code, answer_headers, body = get(shield.port, headers=headers, host=host)
    assert code == 403 and json.loads(body)["error"]["code"] in ("origin_not_allowed", "host_not_allowed")
    assert "access-control-allow-origin" not in answer_headers


def test_the_page_is_read_only(upstream, make_proxy):
    shield = make_proxy(upstream)
    code, headers, _ = post(shield.port, "/status", body=b"{}")
    assert code == 405 and headers["allow"] == "GET"
    assert post(shield.port, "/", body=b"{}")[0] == 404  # more likely a base URL missing its /v1
    assert upstream.attempts == 0


# -- Chromium renders it ------------------------------------------------------------


def png_pixels(data, rows):
    """(width, height, the RGB of each pixel of the first ``rows`` rows) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    assert depth == 8 and color in (2, 6) and interlace == 0
    channels = 3 if color == 2 else 4
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous, pixels = bytearray(stride), []
    for row in range(rows):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                line[i] = (line[i] + near[2]) & 255
        pixels.append([tuple(line[i:i + 3]) for i in range(0, stride, channels)])
        previous = line
    return width, height, pixels


def test_chromium_renders_the_page(upstream, make_proxy, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page was not rendered")
    shield = make_proxy(upstream)
    upstream.plan(status(429), cut(300), good())
    assert post(shield.port)[0] == 200
    shot = tmp_path / "status.png"
    command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--user-data-dir=%s" % (tmp_path / "profile"), "--screenshot=%s" % shot, "--window-size=1280,800",
               shield.url + "/status"]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes(), 500)
    assert (width, height) == (1280, 800)
    assert rows[10][10] == (0x1E, 0x29, 0x3B)  # the header band: the page's own style, not an error's JSON
    assert (0x3B, 0x82, 0xF6) in {pixel for row in rows[200:] for pixel in row}  # a blue request bar

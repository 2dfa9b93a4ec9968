"""The status page: counters, the last requests and a per-minute chart as one self-contained HTML page."""

import html
from typing import Any, List, Mapping, Optional, Sequence

from .recent import Minute
from .replies import Reply
from .usage import iso_time

REFRESH_SECONDS = 10
HTML = "text/html; charset=utf-8"
# No script may run and nothing may load: the page is inert even if a value slipped past escaping.
PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
OUTCOMES = {"delivered": "delivered", "final": "final", "gave_up": "gave up", "client_gone": "client left",
            "stopped": "stopped"}
# The chart's drawing area inside its viewBox.
CHART_WIDTH, CHART_HEIGHT = 960, 200
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 40, 950, 12, 176

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1e293b;
background:#f1f5f9}
header{background:#1e293b;color:#f8fafc;padding:14px 24px;display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 18px}
header h1{font-size:20px;margin:0;font-weight:600}
header .meta{color:#cbd5e1}
header .fresh{margin-left:auto;color:#94a3b8;font-size:12px}
main{padding:18px 24px;max-width:1400px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:6px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 16px;min-width:130px}
.card .n{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}
.card .l{color:#64748b;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.apis{color:#475569;margin:4px 0 0}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px;margin-top:16px}
h2{font-size:15px;margin:0 0 8px;font-weight:600}
.legend{font-weight:400;font-size:13px;color:#475569}
.legend span{display:inline-block;width:11px;height:11px;border-radius:2px;margin:0 5px 0 14px;vertical-align:-1px}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#64748b}
.grid{stroke:#e2e8f0}.req{fill:#3b82f6}.ret{fill:#f97316}.req-key{background:#3b82f6}.ret-key{background:#f97316}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;color:#64748b;font-weight:600;font-size:12px;border-bottom:2px solid #e2e8f0;padding:6px 8px}
td{border-bottom:1px solid #f1f5f9;padding:5px 8px;white-space:nowrap}
td.model{max-width:260px;overflow:hidden;text-overflow:ellipsis}
td.num,th.num{text-align:right}
.ok{color:#15803d}.bad{color:#c2410c}.gone{color:#64748b}.fail{color:#b91c1c;font-weight:600}
.empty{color:#64748b;text-align:center;padding:18px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def duration(seconds: float) -> str:
    """``3 h 05 min``, ``12 min 09 s``, ``42 s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%d h %02d min" % (hours, minutes)
    if minutes:
        return "%d min %02d s" % (minutes, secs)
    return "%d s" % secs


def attempt_label(attempt: Mapping[str, Any]) -> str:
    """An attempt as the page shows it: ``ok``, its status (``429``), or its failure kind (``cut``)."""
    kind, status = attempt.get("kind"), attempt.get("status")
    if kind == "ok":
        return "ok" if status == 200 else str(status)
    if kind == "status" and status is not None:
        return str(status)
    return str(kind).replace("_", " ")


def _attempts_cell(attempts: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for attempt in attempts:
        good = attempt.get("kind") == "ok" and attempt.get("status") == 200
        parts.append('<span class="%s">%s</span>' % ("ok" if good else "bad", _e(attempt_label(attempt))))
    return " &rarr; ".join(parts)


def _tokens_cell(tokens: Optional[Mapping[str, Any]]) -> str:
    if not tokens or (tokens.get("input") is None and tokens.get("output") is None):
        return "&ndash;"
    detail = "cached %s, reasoning %s" % (tokens.get("cached", "?"), tokens.get("reasoning", "?"))
    return '<span title="%s">%s / %s</span>' % (_e(detail), _e(tokens.get("input", "?")), _e(tokens.get("output", "?")))


def _seconds(value: Any) -> str:
    return "%.2f" % value if isinstance(value, (int, float)) and value else "&ndash;"


def request_row(record: Mapping[str, Any], hosts: bool = False) -> str:
    """One table row of a usage record; every value escaped. ``hosts``: with fallbacks, which host served it."""
    time_text = str(record.get("time", ""))
    api = record.get("client_api", "")
    if record.get("upstream_api") != api:
        api = "%s \u2192 %s" % (api, record.get("upstream_api"))
    model = record.get("model_asked") or ""
    if record.get("model_sent") and record.get("model_sent") != model:
        model = "%s \u2192 %s" % (model, record["model_sent"])
    outcome = record.get("outcome", "")
    outcome_class = {"delivered": "ok", "gave_up": "fail", "client_gone": "gone", "stopped": "gone"}.get(outcome, "bad")
    status = record.get("status")
    cells = [
        '<td title="%s">%s</td>' % (_e(time_text), _e(time_text[11:19])),
        "<td>%s</td>" % _e(record.get("path", "")),
        "<td>%s</td>" % _e(api),
        '<td class="model" title="%s">%s</td>' % (_e(model), _e(model)),
        '<td class="num %s">%s</td>' % ("ok" if status == 200 else "bad", _e(status)),
        '<td class="%s">%s</td>' % (outcome_class, _e(OUTCOMES.get(outcome, outcome))),
        "<td>%s</td>" % _attempts_cell(record.get("attempts") or ()),
    ]
    if hosts:
        tried = ", ".join(str(host) for host in record.get("tried") or ())
        cells.append('<td title="tried: %s">%s</td>' % (_e(tried), _e(record.get("served_by") or "\u2013")))
    cells += [
        '<td class="num">%s</td>' % _seconds(record.get("seconds")),
        '<td class="num">%s</td>' % _seconds(record.get("waited")),
        '<td class="num">%s</td>' % _tokens_cell(record.get("tokens")),
    ]
    return "<tr>%s</tr>" % "".join(cells)


def _scale_top(highest: int) -> int:
    """The y axis's top: the smallest of 1, 2, 5 times a power of ten at or above ``highest``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= highest:
                return step * factor
        step *= 10


def chart(minutes: Sequence[Minute]) -> str:
    """An inline SVG of requests (blue) and retries (orange, beside) per minute, oldest minute left."""
    top = _scale_top(max([1] + [m.requests for m in minutes] + [m.retries for m in minutes]))
    slot = (PLOT_RIGHT - PLOT_LEFT) / max(1, len(minutes))
    height = PLOT_BOTTOM - PLOT_TOP
    out = ['<svg viewBox="0 0 %d %d" role="img" aria-label="requests and retries per minute">'
           % (CHART_WIDTH, CHART_HEIGHT)]
    for value in (0, top // 2, top) if top > 1 else (0, top):
        y = PLOT_BOTTOM - height * value / top
        out.append('<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>' % (PLOT_LEFT, PLOT_RIGHT, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (PLOT_LEFT - 6, y + 4, value))
    for index, minute in enumerate(minutes):
        x = PLOT_LEFT + index * slot
        if minute.requests or minute.retries:
            out.append("<g><title>%s UTC: %d requests, %d retries</title>"
                       % (iso_time(minute.start)[11:16], minute.requests, minute.retries))
            out.append(_bar("req", x + 1, slot / 2 - 1, height * minute.requests / top))
            out.append(_bar("ret", x + slot / 2, slot / 2 - 1, height * minute.retries / top))
            out.append("</g>")
        if index == len(minutes) - 1:
            out.append('<text x="%.1f" y="%d" text-anchor="end">now</text>' % (x + slot, CHART_HEIGHT - 6))
        elif index % 15 == 0:
            out.append('<text x="%.1f" y="%d">%s</text>' % (x, CHART_HEIGHT - 6, iso_time(minute.start)[11:16]))
    if not any(minute.requests for minute in minutes):
        out.append('<text x="%d" y="%d" text-anchor="middle">no requests in the last hour</text>'
                   % ((PLOT_LEFT + PLOT_RIGHT) // 2, (PLOT_TOP + PLOT_BOTTOM) // 2))
    out.append("</svg>")
    return "".join(out)


def _bar(css: str, x: float, width: float, height: float) -> str:
    if height <= 0:
        return ""
    return '<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>' % (
        css, x, PLOT_BOTTOM - height, width, height)


def _table_title(count: int) -> str:
    if count == 0:
        return "Requests"
    return "Last request" if count == 1 else "Last %d requests" % count


def _card(label: str, value: Any) -> str:
    return '<div class="card"><div class="n">%s</div><div class="l">%s</div></div>' % (_e(value), _e(label))


def figures_line(figures: Optional[Mapping[str, Any]]) -> str:
    """The figures of /stats the cards do not show: total time, backoff, failed attempts by kind."""
    if not figures or not figures.get("requests"):
        return ""
    seconds = figures.get("seconds") or {}
    parts = []
    if seconds.get("median") is not None and seconds.get("p95") is not None:
        parts.append("total time: median %.2f s, p95 %.2f s" % (seconds["median"], seconds["p95"]))
    parts.append("time in backoff: %.1f s" % (figures.get("backoff_seconds") or 0))
    failed = figures.get("failed_attempts") or {}
    if failed:
        parts.append("failed attempts (absorbed): " + ", ".join(
            "%s %d (%d)" % (kind, counts.get("failed", 0), counts.get("absorbed", 0))
            for kind, counts in failed.items()))
    return '<p class="apis">%s</p>' % " &middot; ".join(_e(part) for part in parts)


def endpoints_section(endpoints: Sequence[Mapping[str, Any]]) -> str:
    """With fallbacks, each endpoint's host, what it served and failed, and its cool-down; nothing with one."""
    if len(endpoints) < 2:
        return ""
    rows = "".join(
        '<tr><td>%s</td><td>%s</td><td class="num">%s</td><td class="num">%s</td><td class="num %s">%s</td></tr>'
        % (_e(entry.get("name") or ("primary" if number == 0 else "FALLBACK_%d" % number)), _e(entry.get("host", "")),
           _e(entry.get("served", 0)), _e(entry.get("failed", 0)),
           "bad" if entry.get("cooling_down_s") else "ok",
           _e("%.1f s" % entry["cooling_down_s"]) if entry.get("cooling_down_s") else "&ndash;")
        for number, entry in enumerate(endpoints))
    return ('<section><h2>Endpoints</h2><table><thead><tr><th>endpoint</th><th>host</th><th class="num">served</th>'
            '<th class="num">failed attempts</th><th class="num">cooling down</th></tr></thead><tbody>%s'
            '</tbody></table></section>' % rows)


def render(health: Mapping[str, Any], records: Sequence[Mapping[str, Any]], minutes: Sequence[Minute],
           now: float, refresh: int = REFRESH_SECONDS, figures: Optional[Mapping[str, Any]] = None) -> str:
    """The whole page from the server's ``health()``, the recent usage records (newest first), the chart's minutes
    and the figures of /stats."""
    apis = health.get("apis") or {}
    api_text = " &middot; ".join("%s: %s" % (_e(name.replace("->", " \u2192 ")), _e(count))
                                 for name, count in sorted(apis.items()))
    hosts = len(health.get("endpoints") or ()) > 1
    rows = "".join(request_row(record, hosts) for record in records) or (
        '<tr><td class="empty" colspan="11">No requests since the proxy started.</td></tr>')
    header_meta = "v%s &middot; upstream %s (%s) &middot; port %s" % (
        _e(health.get("version", "")), _e(health.get("upstream") or "?"), _e(health.get("upstream_api", "")),
        _e(health.get("port", "")))
    parts: List[str] = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="%d">' % refresh,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>retry-shield status</title><style>%s</style></head><body>" % STYLE,
        '<header><h1>retry-shield</h1><span class="meta">%s</span>' % header_meta,
        '<span class="fresh">%s UTC &middot; refreshes every %d s</span></header><main>'
        % (_e(iso_time(now)[:19].replace("T", " ")), refresh),
        '<div class="cards">',
        _card("requests", health.get("requests", 0)),
        _card("retries", health.get("retries", 0)),
        _card("gave up", health.get("gave_up", 0)),
        _card("in flight", health.get("in_flight", 0)),
    ]
    if health.get("queued"):
        parts.append(_card("waiting their turn", health["queued"]))
    parts += [
        _card("uptime", duration(health.get("uptime_s", 0))),
        "</div>",
        '<p class="apis">client &rarr; upstream protocol: %s</p>' % (api_text or "none yet"),
        figures_line(figures),
        endpoints_section(health.get("endpoints") or ()),
        '<section><h2>Requests and retries per minute, last hour <span class="legend">'
        '<span class="req-key"></span>requests<span class="ret-key"></span>retries</span></h2>%s</section>'
        % chart(minutes),
        "<section><h2>%s</h2><table><thead><tr>" % _table_title(len(records)),
        "<th>time (UTC)</th><th>path</th><th>api</th><th>model</th><th class=\"num\">status</th><th>outcome</th>"
        "<th>attempts</th>%s<th class=\"num\">seconds</th><th class=\"num\">waited</th>"
        "<th class=\"num\">tokens in / out</th></tr></thead><tbody>" % ("<th>served by</th>" if hosts else ""),
        rows,
        "</tbody></table></section></main></body></html>",
    ]
    return "".join(parts)


def page_reply(page: str) -> Reply:
    return Reply(200, HTML, page.encode("utf-8"), PAGE_HEADERS)


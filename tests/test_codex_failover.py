"""The real Codex CLI 0.169 through chatgpt.sh with a primary that answers only 429 with Retry-After: 120 and a
fallback that answers: the turn completes, served by the fallback, in seconds instead of minutes."""

import os
import re
import subprocess
import time

from tests.fake_upstream import good, status
from tests.helpers import free_port
from tests.test_codex_cli import OFFLINE, chatgpt_link, codex_binary

ANSWER = "Served by the fallback, whole."


def test_codex_turn_completes_on_the_fallback_while_the_primary_asks_for_120_s(tmp_path, upstream, make_upstream):
    binary = codex_binary()
    fallback = make_upstream()
    upstream.plan(status(429, headers={"Retry-After": "120"}))  # every attempt, for as long as it is asked
    fallback.plan(good(text=ANSWER))
    link, workdir = chatgpt_link(tmp_path)
    log = tmp_path / "proxy.log"
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", FALLBACK_1_ENDPOINT=fallback.url + "/v1",
               PORT=str(free_port()), CODEX_HOME=str(tmp_path / "codex-home"), CLIENT_EXECUTABLE=binary,
               SHIELD_LOG=str(log))
    # Empty, not absent: a .env beside chatgpt.sh fills only what the environment leaves out.
    env.update(FORCED_MODEL="", PROXY_API_KEY="", AZURE_API_KEY="", HOST="127.0.0.1", FALLBACK_1_API_KEY="",
               FALLBACK_1_MODEL="", FALLBACK_1_UPSTREAM_API="", UPSTREAM_API="", FAILOVER_AFTER_WAIT="",
               FAILOVER_AFTER_FAILURES="")
    began = time.monotonic()
    result = subprocess.run([str(link), "exec", "--skip-git-repo-check", *OFFLINE, "Say something shielded."],
                            cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=110)  # under the 120 s the primary asks for
    seconds = time.monotonic() - began
    proxy_log = log.read_text(errors="replace") if log.exists() else "(no proxy log)"
    explain = "exit %d\nstdout:\n%s\nstderr:\n%s\nproxy log:\n%s" % (
        result.returncode, result.stdout[-2000:], result.stderr[-2000:], proxy_log[-3000:])
    print("Codex turn with the primary saying Retry-After: 120 took %.1f s" % seconds)
    assert result.returncode == 0, explain
    assert ANSWER in result.stdout, explain
    assert fallback.attempts >= 1 and upstream.attempts >= 1, explain
    fallback_host = "127.0.0.1:%d" % fallback.port
    served = re.findall(r"POST /v1/responses 200 attempts=\d+ .* served_by=(\S+) ", proxy_log)
    assert served and set(served) == {fallback_host}, explain
    assert seconds < 60, explain  # generous: the machine is shared; the 120 s wait was not waited

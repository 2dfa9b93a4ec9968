"""The real Codex CLI 0.169 through chatgpt.sh with UPSTREAM_API=chat, in front of a chat-only upstream.

Codex speaks only the Responses API; the proxy translates each of its requests to Chat Completions and
the judged chat answer back. Codex exits 0 even when it got nothing usable, so every test checks the
printed answer and what the tool did (the file), not the exit code alone.
"""

import json
import os
import re
import signal
import subprocess

import pytest

from tests.chat_streams import chat_answer
from tests.fake_upstream import cut, raw, status
from tests.helpers import free_port
from tests.test_codex_cli import OFFLINE, chatgpt_link, codex_binary

# The commands of these tests are the fake upstream's, run in a fresh temp folder: no sandbox (a
# container often cannot give Codex's Linux sandbox what it needs) and no approval prompts.
UNSANDBOXED = ["--dangerously-bypass-approvals-and-sandbox"]
CODEX_TIMEOUT = 60
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture
def codex(tmp_path, chat_upstream):
    """codex(model, prompt): one `chatgpt.sh exec` turn in a fresh work dir; (result, work dir)."""
    binary = codex_binary()
    link, workdir = chatgpt_link(tmp_path)
    log = tmp_path / "proxy.log"

    def run(model, prompt):
        env = dict(os.environ, AZURE_ENDPOINT=chat_upstream.url + "/v1", UPSTREAM_API="chat", PORT=str(free_port()),
                   CODEX_HOME=str(tmp_path / "codex-home"), CLIENT_EXECUTABLE=binary, SHIELD_LOG=str(log),
                   RETRY_BASE_DELAY="0.05", RETRY_MAX_DELAY="0.2")
        # Empty, not absent: a .env beside chatgpt.sh fills only what the environment leaves out.
        env.update(FORCED_MODEL="", PROXY_API_KEY="", AZURE_API_KEY="", HOST="127.0.0.1")
        # A session of its own: on a timeout, TERM lets chatgpt.sh stop Codex and the proxy it started.
        process = subprocess.Popen(
            [str(link), "exec", "--skip-git-repo-check", *OFFLINE, *UNSANDBOXED, "-m", model, "-C", str(workdir),
             prompt],
            cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=CODEX_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(process)
            pytest.fail("Codex did not finish within %ds; proxy log:\n%s" % (CODEX_TIMEOUT, tail(log)))
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        result.log = tail(log)
        return result, workdir

    return run


def stop(process):
    """TERM to chatgpt.sh (it stops its client and proxy), then KILL to whatever of its group is left."""
    process.terminate()
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    process.communicate()


def tail(path, size=4000):
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no proxy log)"


def explain(result):
    return "exit %d\nstdout:\n%s\nstderr:\n%s\nproxy log:\n%s" % (
        result.returncode, result.stdout[-3000:], result.stderr[-3000:], result.log)


def chat_posts(upstream):
    """The request bodies of every attempt, after checking that each went to the chat path."""
    posts = [seen for seen in upstream.requests if seen.method == "POST"]
    assert [seen.path for seen in posts] == [CHAT_PATH] * len(posts)
    return [seen.json for seen in posts]


def tool_turn(messages, call_id):
    """The assistant message that made call ``call_id`` and the tool message that answers it."""
    calls = [message for message in messages if message["role"] == "assistant" and any(
        call["id"] == call_id for call in message.get("tool_calls") or ())]
    outputs = [message for message in messages if message["role"] == "tool" and message["tool_call_id"] == call_id]
    assert len(calls) == 1 and len(outputs) == 1, json.dumps(messages[-4:], indent=1)[-3000:]
    return calls[0], outputs[0]


def served(result):
    """The attempts of each request the proxy answered, from its summary lines."""
    return [int(count) for count in re.findall(r"POST /v1/responses 200 attempts=(\d+) ", result.log)]


def test_codex_runs_a_chat_tool_call_with_faults_on_both_turns(codex, chat_upstream):
    command = "printf shielded >> made_by_codex.txt"  # appends: a call run twice would show
    arguments = json.dumps({"cmd": command})
    chat_upstream.plan(
        status(429), cut(400),  # turn 1: a 429, then a stream cut short, then the tool call
        raw(chat_answer(reasoning="make the file", calls=[("call_make", "exec_command", arguments)])),
        cut(300),  # turn 2: a cut stream, then the final text
        raw(chat_answer(text="The file is made.")))
    result, workdir = codex("gpt-5-codex", "Make the file.")
    assert result.returncode == 0, explain(result)
    assert (workdir / "made_by_codex.txt").read_text() == "shielded", explain(result)
    assert "The file is made." in result.stdout, explain(result)
    assert chat_upstream.attempts == 5, explain(result)
    # Codex made two requests; the proxy absorbed the faults (Codex itself fails a turn at a 429).
    assert served(result) == [3, 2], explain(result)
    bodies = chat_posts(chat_upstream)
    first = bodies[0]
    assert first["model"] == "gpt-5-codex" and first["stream"] is True
    assert "exec_command" in [tool["function"]["name"] for tool in first["tools"]]
    assert bodies[1] == first and bodies[2] == first  # each retry resends the same request
    assert bodies[3] == bodies[4]
    # Turn 2 extends turn 1: its messages start with turn 1's, then the call (with the reasoning
    # item Codex sent back) and its output.
    assert bodies[4]["messages"][:len(first["messages"])] == first["messages"]
    call, output = tool_turn(bodies[4]["messages"], "call_make")
    assert call["tool_calls"][0]["function"] == {"name": "exec_command", "arguments": arguments}
    assert call.get("reasoning_content") == "make the file", call
    assert "Process exited with code 0" in output["content"], output


PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch\n"


def test_codex_applies_a_patch_through_the_translated_freeform_tool(codex, chat_upstream):
    chat_upstream.plan(
        raw(chat_answer(calls=[("call_patch", "apply_patch", json.dumps({"input": PATCH}))])),
        raw(chat_answer(text="The patch is applied.")))
    result, workdir = codex("gpt-5.5", "Add hello.txt.")
    assert result.returncode == 0, explain(result)
    assert (workdir / "hello.txt").read_text() == "hi\n", explain(result)
    assert "The patch is applied." in result.stdout, explain(result)
    assert chat_upstream.attempts == 2, explain(result)
    first, second = chat_posts(chat_upstream)
    offered = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
    assert offered["apply_patch"]["parameters"]["required"] == ["input"]
    call, output = tool_turn(second["messages"], "call_patch")
    # Codex took the call as a custom_tool_call (as a function_call it answers "aborted"), and its
    # custom_tool_call went back to the upstream as the same function call.
    assert call["tool_calls"][0]["function"] == {"name": "apply_patch", "arguments": json.dumps({"input": PATCH})}
    assert "Success" in output["content"] and "hello.txt" in output["content"], output


def test_codex_prints_the_answer_of_a_reasoning_stream(codex, chat_upstream):
    chat_upstream.plan(raw(chat_answer(text="Reasoned and answered.", reasoning="thinking about it")))
    result, _ = codex("gpt-5-codex", "Think, then answer.")
    assert result.returncode == 0, explain(result)
    assert "Reasoned and answered." in result.stdout, explain(result)
    assert "thinking about it" not in result.stdout, explain(result)  # reasoning is no part of the answer
    assert chat_upstream.attempts == 1, explain(result)
    assert len(chat_posts(chat_upstream)) == 1

"""The usage record of an Exchange: what it keeps, and that it never keeps a prompt, an answer or a key."""

import json

from retry_shield.shield import AttemptRecord, Exchange
from retry_shield.usage import iso_time, token_counts, usage_record


def exchange(**fields):
    base = dict(method="POST", path="/v1/responses", client_protocol="responses", upstream_protocol="chat",
                endpoint="https://example.test/v1/chat/completions", model_asked="gpt-5.5", model_sent="dep-1",
                client_streamed=True, started=100.0)
    base.update(fields)
    return Exchange(**base)


def test_token_counts_of_a_responses_usage():
    usage = {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
             "input_tokens_details": {"cached_tokens": 100}, "output_tokens_details": {"reasoning_tokens": 12}}
    assert token_counts(usage) == {"input": 120, "output": 30, "cached": 100, "reasoning": 12}


def test_token_counts_of_a_chat_usage_without_details():
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert token_counts(usage) == {"input": 7, "output": 3, "cached": None, "reasoning": None}


def test_token_counts_of_no_usage_or_a_foreign_one():
    assert token_counts(None) is None
    assert token_counts({"input_tokens": "many", "output_tokens": True}) == {
        "input": None, "output": None, "cached": None, "reasoning": None}


def test_iso_time_is_utc_to_the_millisecond():
    assert iso_time(0.25) == "1970-01-01T00:00:00.250Z"


def test_usage_record_of_a_delivered_exchange_after_retries():
    attempts = (AttemptRecord(1, "status", 429, "HTTP 429: slow down, your prompt was: SECRET PROMPT", 0.1234),
                AttemptRecord(2, "cut", None, "stream ended early", 1.5),
                AttemptRecord(3, "ok", 200, "completed", 2.0))
    record = usage_record(exchange(attempts=attempts, retries=2, waited=3.25, queued=0.5, outcome="delivered",
                                   status=200, bytes=5000, seconds=7.0004, served_by="example.test",
                                   tried=("example.test",),
                                   usage={"prompt_tokens": 7, "completion_tokens": 3}), 0.0)
    assert record == {
        "time": "1970-01-01T00:00:00.000Z", "path": "/v1/responses", "client_api": "responses",
        "upstream_api": "chat", "model_asked": "gpt-5.5", "model_sent": "dep-1", "client_stream": True,
        "status": 200, "outcome": "delivered",
        "attempts": [{"kind": "status", "status": 429, "seconds": 0.123},
                     {"kind": "cut", "status": None, "seconds": 1.5},
                     {"kind": "ok", "status": 200, "seconds": 2.0}],
        "retries": 2, "seconds": 7.0, "waited": 3.25, "queued": 0.5, "bytes": 5000,
        "tokens": {"input": 7, "output": 3, "cached": None, "reasoning": None},
        "served_by": "example.test", "tried": ["example.test"],
    }
    assert "SECRET PROMPT" not in json.dumps(record)


def test_usage_record_of_a_client_that_left():
    record = usage_record(exchange(attempts=(AttemptRecord(1, "client_gone", None, "client gone", 0.5),),
                                   outcome="client_gone", status=499, seconds=0.5), 0.0)
    assert (record["outcome"], record["status"], record["tokens"]) == ("client_gone", 499, None)


def test_usage_record_names_the_hosts_tried_and_the_one_that_served():
    attempts = (AttemptRecord(1, "status", 429, "HTTP 429", 0.1), AttemptRecord(2, "ok", 200, "completed", 1.0, 1))
    record = usage_record(exchange(attempts=attempts, outcome="delivered", status=200, failover=True,
                                   served_by="west.example.test:8443", tried=("east.example.test",
                                                                             "west.example.test:8443")), 0.0)
    assert record["served_by"] == "west.example.test:8443"
    assert record["tried"] == ["east.example.test", "west.example.test:8443"]
    gone = usage_record(exchange(attempts=attempts[:1], outcome="client_gone", status=499,
                                 tried=("east.example.test",)), 0.0)
    assert gone["served_by"] is None and gone["tried"] == ["east.example.test"]

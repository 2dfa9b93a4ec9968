"""GET /v1/models goes through the same upstream code as every POST attempt: its kept-alive connections."""

import json

from tests.helpers import post, request


def test_models_reuses_the_kept_alive_upstream_connection(upstream, make_proxy):
    shield = make_proxy(upstream)
    assert post(shield.port)[0] == 200
    status_code, _, body = request(shield.port, "GET", "/v1/models", body=None)
    assert status_code == 200 and json.loads(body)["data"][0]["id"] == "gpt-fake"
    assert post(shield.port)[0] == 200
    assert [(seen.method, seen.path) for seen in upstream.requests] == [
        ("POST", "/v1/responses"), ("GET", "/v1/models"), ("POST", "/v1/responses")]
    peers = [seen.peer for seen in upstream.requests]
    assert peers[0] == peers[1] == peers[2], "one kept-alive upstream connection, not one per request: %r" % peers

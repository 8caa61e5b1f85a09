"""The OpenAI-compatible HTTP front: the openai SDK (sync, async, streaming) and raw HTTP against
real servers on loopback with the real SmolLM2 on both tiers.

Two servers: a live `corea serve --http-port` process (its LLM tier an in-process stand-in)
for the SDK, the gRPC comparison and the error classes; and build_server(http_port=...) in this
process around the session SLM, with tokens and limits, where the executors' abort counters show
what a disconnecting client leaves behind. Responses are checked against the openai package's own
types (ChatCompletion, ChatCompletionChunk).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cascade_servers import SMALL, llm_server, serve_banner, stand_in_llm
from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.escalation.grpc_llm import GrpcLLM
from corea_engine.escalation.local_llm import ExecutorLLM
from corea_engine.protos import corea_pb2, corea_pb2_grpc
from corea_engine.server.app import build_server
from corea_engine.server.auth import TokenTable
from corea_engine.server.background import ServerThread
from corea_engine.server.convert import from_response
from corea_engine.server.security import ServerSecurity
from corea_engine.server.tls import ServerTLS
from tls_certs import make_certs

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
ASK = [{"role": "user", "content": QUESTION}]
TIMING = {"request_id", "slm_latency_ms", "llm_latency_ms", "latency_ms", "tie_draw"}  # tie_draw: per request id


# ------------------------------------------------------------------ a live `corea serve --http-port`
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    config = tmp_path_factory.mktemp("serve") / "cascade.json"
    config.write_text(json.dumps(SMALL))
    env = {**os.environ, "COREA_THREADS": os.environ.get("COREA_THREADS", "1")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corea_engine.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
         "--no-metrics", "--llm-model", "smollm2-135m", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _, grpc_port, http_port = serve_banner(proc)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield f"http://127.0.0.1:{http_port}", corea_pb2_grpc.CoreaStub(channel)
    channel.close()
    proc.terminate()
    proc.wait(timeout=60)


def sdk(base: str, api_key: str = "unused", cls=openai.OpenAI):
    return cls(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=600)


def corea_of(obj) -> dict:
    return (obj.model_extra or {})["corea"]


def test_sdk_sync_threshold_zero_is_answered_by_the_slm_with_the_grpc_result(live):
    base, stub = live
    raw = sdk(base).chat.completions.with_raw_response.create(model="corea-t0", messages=ASK)
    reply = raw.parse()
    assert isinstance(reply, ChatCompletion) and reply.object == "chat.completion" and reply.model == "corea-t0"
    ext = corea_of(reply)
    assert ext["answered_by"] == "slm" and not ext["deferred"] and ext["threshold"] == 0.0
    assert reply.choices[0].message.content == ext["answer"] != ""
    assert reply.usage.completion_tokens == ext["slm_completion_tokens"] > 0 and ext["llm_completion_tokens"] == 0
    assert 0 < ext["time_to_decision_ms"] < ext["latency_ms"] + 50  # timed by the front, from just before the cascade
    headers = raw.headers
    assert headers["x-corea-tier"] == "slm" and headers["x-corea-deferred"] == "false"
    assert float(headers["x-corea-confidence"]) == pytest.approx(ext["confidence_expected"], abs=1e-4)
    # The same request over gRPC (greedy): every field of the result agrees, timings aside.
    grpc_result = dataclasses.asdict(from_response(stub.Solve(corea_pb2.SolveRequest(question=QUESTION, threshold=0.0),
                                                              timeout=600)))
    assert {k: v for k, v in grpc_result.items() if k not in TIMING | {"trace"}} == {
        k: ext[k] for k in grpc_result if k not in TIMING | {"trace"}}
    untimed = lambda trace: [{k: v for k, v in t.items() if k != "latency_ms"} for t in trace]  # noqa: E731
    assert untimed(grpc_result["trace"]) == untimed(ext["trace"]) and ext["trace"][0]["decision"] == "accept"


def test_sdk_async_llm_only_model_is_answered_by_the_llm_tier(live):
    base, _ = live

    async def ask():
        client = sdk(base, cls=openai.AsyncOpenAI)
        try:
            return await client.chat.completions.create(model="corea-llm-only", messages=ASK)
        finally:
            await client.close()

    reply = asyncio.run(ask())
    ext = corea_of(reply)
    assert ext["mode"] == "llm_only" and ext["answered_by"] == "llm" and not ext["degraded"], ext
    assert ext["slm_completion_tokens"] == 0 and ext["llm_completion_tokens"] > 0
    assert "stand-in" in ext["llm_model"]
    assert reply.usage.total_tokens == ext["llm_prompt_tokens"] + ext["llm_completion_tokens"]
    assert ext["llm_only_cost"] == pytest.approx(ext["cost"])


def test_sdk_stream_sends_the_decision_before_the_llm_tokens(live):
    base, _ = live
    stream = sdk(base).chat.completions.create(
        model="corea-t1", messages=ASK, stream=True, stream_options={"include_usage": True},
        extra_body={"confidence_source": "sampled", "contract": "json_confidence_first"})
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    decisions = [i for i, c in enumerate(chunks) if "decision" in ((c.model_extra or {}).get("corea") or {})]
    tokens = [i for i, c in enumerate(chunks) if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content")]
    assert len(decisions) == 1 and tokens and decisions[0] < tokens[0]
    decision = corea_of(chunks[decisions[0]])["decision"]
    assert decision["tier"] == "llm" and decision["deferred"] and "< threshold 1" in decision["reason"]
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason == "stop")
    result = corea_of(final)
    assert result["answered_by"] == "llm" and result["deferred"] and result["slm_completion_tokens"] <= 10
    # The streamed tokens are the LLM's text; the content is its answer, as in a whole response.
    assert "".join(chunks[i].choices[0].delta.model_extra["reasoning_content"] for i in tokens) == result["text"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == result["answer"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == (
        result["slm_prompt_tokens"] + result["slm_completion_tokens"] + result["llm_prompt_tokens"]
        + result["llm_completion_tokens"])


def test_raw_stream_is_server_sent_events_ending_with_done(live):
    base, _ = live
    body = {"model": "corea-slm-only", "messages": ASK, "stream": True, "max_tokens": 6}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-corea-mode"] == "slm_only" and r.headers["x-corea-request-id"]
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(line[6:])) for line in lines[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    result = corea_of(chunks[-1])
    assert result["mode"] == "slm_only" and result["slm_completion_tokens"] <= 6
    # Six tokens cannot hold the contract: cut at the cap, which OpenAI calls "length".
    assert result["slm_finish_reason"] == "length" and chunks[-1].choices[0].finish_reason == "length"


ERRORS = [  # (body changes, SDK exception, status, words in the message)
    ({"model": "gpt-4"}, openai.NotFoundError, 404, "does not exist"),
    ({"model": "corea-t1.5"}, openai.BadRequestError, 400, "the model 'corea-t1.5' asks for threshold 1.5"),
    ({"threshold": -0.1}, openai.BadRequestError, 400, "threshold must be"),
    ({"model": "corea-slm-only", "mode": "cascade"}, openai.BadRequestError, 400, "contradicts"),
    ({"messages": []}, openai.BadRequestError, 400, "messages is empty"),
    ({"messages": [{"role": "user", "content": "   "}]}, openai.BadRequestError, 400, "question is empty"),
    ({"n": 2}, openai.BadRequestError, 400, "n > 1"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, 400, "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     openai.BadRequestError, 400, "images are not supported"),
    ({"messages": [*ASK, {"role": "assistant", "content": "8"}, *ASK]}, openai.BadRequestError, 400, "one question"),
    ({"contract": "yaml"}, openai.BadRequestError, 400, "yaml"),
    ({"max_tokens": 0}, openai.BadRequestError, 400, "max_tokens"),
    ({"threshhold": 0.5}, openai.BadRequestError, 400, "unknown parameter 'threshhold'"),
]


@pytest.mark.parametrize("changes,exception,status,words", ERRORS, ids=[e[3] for e in ERRORS])
def test_every_error_class_through_the_sdk_and_raw_http(live, changes, exception, status, words):
    base, _ = live
    body = {"model": "corea", "messages": ASK, **changes}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    known = {k: body.pop(k) for k in ("model", "messages")}
    with pytest.raises(exception) as err:
        sdk(base).chat.completions.create(**known, extra_body=body)
    assert err.value.status_code == status and words in err.value.message


def test_a_threshold_model_out_of_range_names_the_model_parameter(live):
    base, _ = live
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "corea-t1.5", "messages": ASK}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(live):
    base, _ = live
    huge = {"model": "corea", "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    r = httpx.post(f"{base}/v1/chat/completions", json=huge, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as err:
        sdk(base).chat.completions.create(**huge)
    assert err.value.status_code == 413
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/ready").json()
    assert ready["status"] == "ready" and ready["llm"]["available"] and ready["llm"]["reachable"]
    assert ready["llm"]["breaker"] == "closed"
    assert (ready["slm"]["dtype"], ready["slm"]["quantization"]) == ("float32", "none")  # serve's default
    assert [m.id for m in sdk(base).models.list()] == ["corea", "corea-slm-only", "corea-llm-only"]
    assert httpx.get(f"{base}/v1/nothing").json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("flags,words", [(["--http-port", "70000"], "--http-port: must be in [0, 65535]"),
                                         (["--port", "50999", "--http-port", "50999"], "must differ from --port")])
def test_serve_refuses_a_bad_http_port_before_loading_a_model(flags, words):
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "serve", "--mode", "slm_only", *flags],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and words in out.stderr, out.stderr[-2000:]


# ------------------------------------------------------------------ in process: tokens, limits, aborts
CAP = 24
TOKENS = {"tok-a": "a", "tok-b": "b"}


@pytest.fixture(scope="module")
def secured(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    security = ServerSecurity(tokens=TokenTable(TOKENS), max_new_tokens=CAP, max_inflight_per_client=1)
    cascade = Cascade(slm_executor, ExecutorLLM(llm_executor), CascadeConfig(**SMALL))
    server = ServerThread(lambda: build_server(cascade, host="127.0.0.1", security=security, http_port=0)).start()
    yield server, llm_executor, f"http://127.0.0.1:{server.server.http_port}", security
    server.close()
    llm_executor.close()


def count(server, method, outcome) -> float:
    return server.server.metrics.registry.get_sample_value(
        "corea_requests_total", {"method": method, "outcome": outcome}) or 0.0


def total(server, method) -> float:
    return sum(count(server, method, outcome) for outcome in ("accepted", "deferred", "degraded"))


def test_token_auth_holds_on_http_and_no_model_runs(secured, slm_executor):
    server, _, base, _ = secured
    prefills, refused = slm_executor.stats.prefills, server.server.http.refused
    for key, words in (("unused", "not valid"), ("tok-x", "not valid")):
        with pytest.raises(openai.AuthenticationError) as err:
            sdk(base, key).chat.completions.create(model="corea", messages=ASK)
        assert words in err.value.message
        with pytest.raises(openai.AuthenticationError):
            sdk(base, key).models.list()
    assert httpx.post(f"{base}/v1/chat/completions", json={"model": "corea", "messages": ASK}).status_code == 401
    assert server.server.http.refused == refused + 5
    assert slm_executor.stats.prefills == prefills
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/ready").status_code == 200


def test_limits_hold_on_http_and_are_shared_with_grpc(secured, slm_executor):
    server, _, base, security = secured
    with pytest.raises(openai.BadRequestError) as err:
        sdk(base, "tok-a").chat.completions.create(model="corea-slm-only", messages=ASK, max_tokens=CAP + 1)
    assert f"at most {CAP} new tokens" in err.value.message
    # Client a holds a stream open: its next call is refused on HTTP and on gRPC alike.
    headers = {"authorization": "Bearer tok-a"}
    body = {"model": "corea-slm-only", "messages": ASK, "stream": True, "max_tokens": CAP}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=600) as held:
        lines = held.iter_lines()
        next(lines)
        assert server.server.limit.inflight == 1
        with pytest.raises(openai.RateLimitError) as err:
            sdk(base, "tok-a").chat.completions.create(model="corea-slm-only", messages=ASK, max_tokens=4)
        assert "client token:a has 1 request(s) in flight" in err.value.message
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as rpc:
            corea_pb2_grpc.CoreaStub(channel).Solve(corea_pb2.SolveRequest(question=QUESTION), timeout=60,
                                                    metadata=[("authorization", "Bearer tok-a")])
        assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert wait_for(lambda: server.server.limit.inflight == 0 and not security.limits.inflight)
    served = total(server, "ChatCompletions")
    reply = sdk(base, "tok-a").chat.completions.create(model="corea-slm-only", messages=ASK, max_tokens=4)
    assert corea_of(reply)["slm_completion_tokens"] <= 4 and reply.choices[0].finish_reason == "length"
    assert total(server, "ChatCompletions") == served + 1  # the gRPC service's metrics count HTTP calls too


def wait_for(predicate, limit_s=60.0) -> bool:
    """The server notices a disconnect on its own loop; poll (bounded) for what it did then."""
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_a_client_that_disconnects_mid_stream_aborts_the_slm_request(secured, slm_executor):
    server, _, base, _ = secured
    aborts, cancelled = slm_executor.aborts, count(server, "ChatCompletionsStream", "cancelled")
    body = {"model": "corea", "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": "Bearer tok-b"},
                      timeout=600) as r:
        lines = r.iter_lines()  # held: dropping the iterator would close the connection now
        assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
        assert wait_for(lambda: slm_executor.running > 0)  # past its prefill, where an abort is seen at once
    # Closed while the SLM generates (its tokens are held until the decision): the SLM request is aborted.
    assert wait_for(lambda: slm_executor.aborts == aborts + 1)
    assert wait_for(lambda: count(server, "ChatCompletionsStream", "cancelled") == cancelled + 1)
    assert wait_for(lambda: server.server.limit.inflight == 0)


def test_a_client_that_disconnects_after_the_decision_aborts_the_llm_request(secured):
    server, llm_executor, base, _ = secured
    aborts = llm_executor.aborts
    body = {"model": "corea-t1", "messages": ASK, "stream": True, "confidence_source": "sampled",
            "contract": "json_confidence_first"}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": "Bearer tok-b"},
                      timeout=600) as r:
        lines = r.iter_lines()
        assert any(line and "decision" in json.loads(line[6:]).get("corea", {}) for line in lines)
        assert wait_for(lambda: llm_executor.running > 0)  # the LLM generates: go away
    assert wait_for(lambda: llm_executor.aborts == aborts + 1)
    assert wait_for(lambda: server.server.limit.inflight == 0)


def test_a_client_that_gives_up_on_a_whole_response_aborts_it(secured, slm_executor):
    server, _, base, _ = secured
    aborts, cancelled = slm_executor.aborts, count(server, "ChatCompletions", "cancelled")
    body = json.dumps({"model": "corea", "messages": ASK}).encode()
    port = server.server.http_port
    with socket.create_connection(("127.0.0.1", port)) as conn:  # a client that sends, waits a little, leaves
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-b\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_for(lambda: slm_executor.running > 0)
    assert wait_for(lambda: slm_executor.aborts == aborts + 1)
    assert wait_for(lambda: count(server, "ChatCompletions", "cancelled") == cancelled + 1)
    assert wait_for(lambda: server.server.limit.inflight == 0)


def test_the_http_front_speaks_tls_and_mtls_with_the_grpc_service_s_files(slm_executor, tmp_path):
    certs = make_certs(tmp_path)
    security = ServerSecurity(tls=ServerTLS(certs.server_cert, certs.server_key))
    cascade = Cascade(slm_executor, None, CascadeConfig(mode="slm_only", **SMALL))
    with ServerThread(lambda: build_server(cascade, host="127.0.0.1", security=security, http_port=0)) as server:
        port = server.server.http_port
        assert httpx.get(f"https://127.0.0.1:{port}/ready", verify=ssl.create_default_context(cafile=certs.ca)).json()[
            "slm"]["loaded"]
        with pytest.raises(httpx.HTTPError):  # plaintext is not served, nor a server the client cannot verify
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", verify=ssl.create_default_context(cafile=certs.other_ca))
    mtls = ServerSecurity(tls=ServerTLS(certs.server_cert, certs.server_key, client_ca_file=certs.ca))
    with ServerThread(lambda: build_server(cascade, host="127.0.0.1", security=mtls, http_port=0)) as server:
        url = f"https://127.0.0.1:{server.server.http_port}/health"
        trusted = ssl.create_default_context(cafile=certs.ca)
        with pytest.raises(httpx.HTTPError):  # no client certificate
            httpx.get(url, verify=trusted, timeout=10)
        trusted.load_cert_chain(certs.client_cert, certs.client_key)
        assert httpx.get(url, verify=trusted, timeout=10).json() == {"status": "ok"}


def test_ready_probes_the_llm_tier_and_stays_ready_without_it(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    llm = llm_server(llm_executor)
    cascade = Cascade(slm_executor, GrpcLLM(llm.address), CascadeConfig(**SMALL))
    try:
        with ServerThread(lambda: build_server(cascade, host="127.0.0.1", http_port=0)) as server:
            url = f"http://127.0.0.1:{server.server.http_port}/ready"
            up = httpx.get(url, timeout=30)
            assert up.status_code == 200 and up.json()["llm"]["reachable"] and up.json()["llm"]["reason"] == ""
            llm.close()  # the LLM tier goes away: still ready (answers degrade, with reasons), and it says why
            down = httpx.get(url, timeout=30)
            assert down.status_code == 200 and down.json()["slm"]["loaded"]
            assert not down.json()["llm"]["reachable"] and "UNAVAILABLE" in down.json()["llm"]["reason"]
    finally:
        llm.close()
        llm_executor.close()

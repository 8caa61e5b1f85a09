"""corea.v1.LLM over the embedded runtime (the stand-in LLM tier): generation, stop strings,
deadlines and refusals, called through the generated stub."""

from __future__ import annotations

import grpc
import pytest

from cascade_servers import llm_server, stand_in_llm
from corea_engine.protos import llm_pb2, llm_pb2_grpc


@pytest.fixture(scope="module")
def stub(slm_executor):
    executor = stand_in_llm(slm_executor)
    server = llm_server(executor)
    channel = grpc.insecure_channel(server.address)
    yield llm_pb2_grpc.LLMStub(channel)
    channel.close()
    server.close()
    executor.close()


def chat(text: str, **fields) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role="user", content=text)], **fields)


def test_stream_chunks_add_up_to_the_result_and_stop_strings_cut(stub):
    chunks = list(stub.GenerateStream(chat("Count from one to ten in words.", max_new_tokens=12, request_id="s1"), timeout=300))
    result = chunks[-1].result
    assert chunks[-1].WhichOneof("chunk") == "result" and result.request_id == "s1"
    assert "".join(c.text for c in chunks[:-1]) == result.text
    assert result.completion_tokens == 12 and result.finish_reason == "length" and result.model == "stand-in-llm"
    stop = result.text.strip().split()[1]  # a word the greedy continuation will produce again
    cut = stub.Generate(chat("Count from one to ten in words.", max_new_tokens=12, stop=[stop]), timeout=300)
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert result.text.startswith(cut.text)


def test_contract_with_bounds_gives_parseable_output(stub):
    from corea_engine.contract import build_messages, get_format

    fmt = get_format("json").bounded(max_reasoning_chars=40, max_answer_chars=8)
    messages = [llm_pb2.ChatMessage(**m) for m in build_messages("What is 2 + 3?", fmt)]
    r = stub.Generate(llm_pb2.GenerateRequest(messages=messages, contract="json", max_reasoning_chars=40, max_answer_chars=8), timeout=300)
    parsed = fmt.parse(r.text)
    assert len(parsed.reasoning) <= 40 and 1 <= len(parsed.answer) <= 8 and 0 <= parsed.confidence <= 1
    assert r.finish_reason == "stop"


def test_deadline_ms_ends_the_call_with_deadline_exceeded(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(chat("Write a long story.", max_new_tokens=200, deadline_ms=1), timeout=300)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("request_fields,message", [
    (dict(contract="yaml"), "unknown contract 'yaml'"),
    (dict(prompt="also a prompt"), "not both"),
    (dict(max_new_tokens=100000), "max_new_tokens"),
    (dict(temperature=-1), "temperature"),
])
def test_bad_requests_are_invalid_argument(stub, request_fields, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(chat("hi", **request_fields), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()

"""Request building: chat template + tokenization (every executor request) and the gRPC message."""

from __future__ import annotations

from corea_engine.contract import build_messages, get_format


def bench_chat_template_encode(benchmark, tokenizer, question):
    messages = build_messages(question, get_format("json"))

    def encode():
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)

    ids = benchmark(encode)
    assert len(ids) > 50


def bench_build_messages(benchmark, question):
    fmt = get_format("json")
    benchmark(build_messages, question, fmt)


def bench_solve_request_proto(benchmark, question):
    from corea_engine.protos import corea_pb2

    def build():
        request = corea_pb2.SolveRequest(question=question, request_id="bench-1", contract="json",
                                         max_new_tokens=128, mode=corea_pb2.ROUTING_MODE_CASCADE)
        request.threshold = 0.5
        return request.SerializeToString()

    data = benchmark(build)
    assert corea_pb2.SolveRequest.FromString(data).question == question

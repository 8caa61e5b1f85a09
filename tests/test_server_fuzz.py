"""Hypothesis-driven requests against a live server: every field of corea.v1.SolveRequest and of
the worker's sglang.grpc.scheduler.GenerateRequest (odd Unicode, huge and empty strings, negative/NaN/infinite numbers,
unknown enum values, missing fields), batches of them, and raw bytes that may not be a message.

Every call ends with a status the service means to give (never INTERNAL or UNKNOWN, never a
hang; bytes that are not a message are INVALID_ARGUMENT), and afterwards the server is still SERVING and answers a normal request.
The server caps max_new_tokens at 8 and defaults to slm_only with 8 tokens, so a fuzz input that
passes validation costs a few decode steps; most fail validation at once. Huge strings are over
the 8,000-character question limit: a question just under it made of astral-plane digits is
~7,500 prompt tokens, legal, and a multi-minute prefill on CPU (a cost, not a fault). The worker
caps max_new_tokens at 8 too (an unset one included).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cascade_servers import SMALL
from corea_engine.cascade import Cascade, CascadeConfig
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.protos import corea_pb2, corea_pb2_grpc
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.security import ServerSecurity
from corea_engine.server.worker_service import WorkerService

CAP = 8
# No shrinking: each step would be more calls to a live model (CI time); the failing input is reported as found.
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIMEOUT = 60  # a hang shows up as DEADLINE_EXCEEDED, which no assertion accepts
# Statuses a well-formed message may get: answered, refused as invalid, refused by the cap.
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}

# Text with the awkward parts of Unicode: NUL and controls, combining marks, bidi overrides,
# zero-width joiners, astral-plane symbols, private use, non-characters (no lone surrogates:
# protobuf strings are UTF-8, raw bytes below cover invalid UTF-8).
odd_chars = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(["\x00", "\x7f", "\u0301", "\u202e", "\u200d", "\ufeff", "\uffff", "\U0001f600", "\U000e0001",
                     "\ue000", "𝟘", "ﷺ", "\n", "\t"]))
# Whole strings: empty and blank, special tokens, and huge ones (built by a map to keep reprs short).
odd_strings = st.sampled_from([("", 1), (" ", 1), ("\r\n", 2), ("<|im_end|>", 1), ('{"answer":', 1), ("x", 9000),
                               ("𝟘", 9000), ("𝟘", 100), ("\x00", 64), ("What is 2 + 3?", 1)]).map(lambda p: p[0] * p[1])
odd_text = st.one_of(st.text(odd_chars, max_size=40), odd_strings)
# Each field mixes sensible values with hostile ones, so that some calls pass validation and run.
normal_questions = st.sampled_from(["What is 2 + 3?", "Tom has 3 apples and eats one. How many are left?", "¿Cuánto es 7 × 6?"])
floats = st.one_of(st.none(), st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([-0.0, 0.5, 1.0, 1e308]))
enum_values = st.one_of(st.none(), st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))
uint32 = st.one_of(st.none(), st.integers(0, CAP), st.integers(0, 2**32 - 1))
contracts = st.one_of(st.none(), st.sampled_from(["json", "tags", "json_confidence_first", "tags_confidence_first"]), odd_text)


def _set(msg, **fields):
    for name, value in fields.items():
        if value is not None:  # None: the field stays missing
            setattr(msg, name, value)
    return msg


solve_requests = st.builds(
    lambda **f: _set(corea_pb2.SolveRequest(), **f),
    question=st.one_of(normal_questions, normal_questions, odd_text, st.none()),
    request_id=st.one_of(st.none(), odd_text), threshold=floats,
    confidence_source=enum_values, mode=enum_values, contract=contracts, max_new_tokens=uint32,
)
token_ids = st.lists(st.one_of(st.integers(0, 49151), st.integers(0, 2**32 - 1)), max_size=12)  # vocab: 49152
grammars = st.one_of(st.none(), odd_text.map(lambda t: ("regex", t)), odd_text.map(lambda t: ("json_schema", t)),
                     odd_text.map(lambda t: ("ebnf_grammar", t)),
                     st.sampled_from([("regex", "[0-9]+"), ("json_schema", '{"type": "integer"}'),
                                      ("ebnf_grammar", 'root ::= "yes" | "no"')]))
sampling_params = st.builds(
    lambda grammar, stop, stop_ids, **f: _set(pb.SamplingParams(stop=stop, stop_token_ids=stop_ids,
                                                                **dict([grammar] if grammar else [])), **f),
    grammar=grammars, stop=st.lists(odd_text, max_size=3), stop_ids=st.lists(st.integers(0, 2**32 - 1), max_size=3),
    max_new_tokens=uint32, temperature=st.one_of(st.none(), st.floats(0, 2), st.floats(width=32)),
    top_p=st.one_of(st.none(), st.floats(0.05, 1), st.floats(width=32)),
    top_k=st.one_of(st.none(), st.integers(-2, 50), st.integers(-(2**31), 2**31 - 1)),
    n=st.one_of(st.none(), st.integers(0, 3)), repetition_penalty=st.one_of(st.none(), st.just(1.0), st.floats(width=32)),
)
generate_requests = st.builds(
    lambda ids, logprob_ids, sampling, **f: _set(pb.GenerateRequest(
        tokenized=pb.TokenizedInput(input_ids=ids), token_ids_logprob=logprob_ids, sampling_params=sampling), **f),
    ids=token_ids, logprob_ids=st.lists(st.integers(0, 2**32 - 1), max_size=3), sampling=sampling_params,
    request_id=st.one_of(st.none(), odd_text), stream=st.one_of(st.none(), st.booleans()),
    return_logprob=st.one_of(st.none(), st.booleans()),
    top_logprobs_num=st.one_of(st.none(), st.integers(0, 5), st.integers(-(2**31), 2**31 - 1)),
)


@pytest.fixture(scope="module")
def server(slm_executor):
    """One server with both services (the cascade without an LLM, and a worker) on the session SLM."""
    config = CascadeConfig(**SMALL, mode="slm_only", max_new_tokens=CAP)
    cascade = Cascade(slm_executor, None, config)
    worker = WorkerService(slm_executor, max_new_tokens=CAP)
    with ServerThread(lambda: build_server(cascade, worker=worker, port=0, host="127.0.0.1",
                                           security=ServerSecurity(max_new_tokens=CAP))) as s:
        with grpc.insecure_channel(s.address) as channel:
            yield s, channel


def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        out = call()
        if not hasattr(out, "ListFields"):  # a stream: read it to the end
            list(out)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


@FUZZ
@given(request=solve_requests)
def test_fuzzed_solve_requests_get_a_meant_status(server, request):
    _, channel = server
    stub = corea_pb2_grpc.CoreaStub(channel)
    code, details = code_of(lambda: stub.Solve(request, timeout=TIMEOUT))
    assert code in EXPECTED, (code, details, request)
    stream_code, stream_details = code_of(lambda: stub.SolveStream(request, timeout=TIMEOUT))
    assert stream_code == code, (stream_code, stream_details, code, details)  # both paths validate alike


@FUZZ
@given(requests=st.lists(solve_requests, max_size=3))
def test_fuzzed_batches_get_a_meant_status(server, requests):
    _, channel = server
    stub = corea_pb2_grpc.CoreaStub(channel)
    code, details = code_of(lambda: stub.SolveBatch(corea_pb2.SolveBatchRequest(requests=requests), timeout=TIMEOUT))
    assert code in EXPECTED, (code, details, requests)


@FUZZ
@given(request=generate_requests)
def test_fuzzed_generate_requests_get_a_meant_status(server, request):
    _, channel = server
    stub = pb_grpc.SglangSchedulerStub(channel)
    code, details = code_of(lambda: stub.Generate(request, timeout=TIMEOUT))
    assert code in EXPECTED, (code, details, request)


METHODS = ["/corea.v1.Corea/Solve", "/corea.v1.Corea/SolveBatch", "/sglang.grpc.scheduler.SglangScheduler/Abort"]
STREAM_METHODS = ["/corea.v1.Corea/SolveStream", "/sglang.grpc.scheduler.SglangScheduler/Generate"]
raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 16, b"\x08", b"\x3a\x01",
                     b"\x0a\x05hello\x38\x05"]),  # invalid UTF-8; bad length; bad tags; a valid slm_only-sized question
)


@FUZZ
@given(payload=raw_bytes, method=st.sampled_from(METHODS + STREAM_METHODS))
def test_raw_bytes_get_a_status(server, payload, method):
    _, channel = server
    identity = lambda b: b  # noqa: E731 - send the bytes as they are, read the answer as bytes
    if method in STREAM_METHODS:
        call = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
    else:
        call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    code, details = code_of(lambda: call(payload, timeout=TIMEOUT))
    assert code in EXPECTED, (code, details, payload)
    if code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details:
        assert details.startswith(method), details  # refused by hygiene.RequestHygiene, naming the method


def test_bytes_that_are_not_a_message_are_invalid_argument(server):
    _, channel = server
    call = channel.unary_unary("/corea.v1.Corea/Solve", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    code, details = code_of(lambda: call(b"\x0a\x02\xff\xfe", timeout=TIMEOUT))  # question = invalid UTF-8
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bad UTF-8" in details, (code, details)


def test_a_huge_echoed_field_is_cut_from_the_status_details(server):
    """'unknown contract <9,000 characters>' would overflow the client's metadata limit."""
    _, channel = server
    request = corea_pb2.SolveRequest(question="What is 2 + 3?", contract="𝟘" * 9000)
    code, details = code_of(lambda: corea_pb2_grpc.CoreaStub(channel).Solve(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown contract" in details, (code, details[:200])
    assert details.endswith("characters, cut)") and len(details) < 500


def test_after_the_fuzz_the_server_is_healthy_and_answers(server):
    """Runs after the fuzz tests above (file order): the same server, still well."""
    s, channel = server
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "corea.v1.Corea", "sglang.grpc.scheduler.SglangScheduler"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service="corea.v1.Corea"), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    r = corea_pb2_grpc.CoreaStub(channel).Solve(corea_pb2.SolveRequest(question="What is 2 + 3?"), timeout=300)
    assert r.answered_by == corea_pb2.TIER_SLM and r.slm_tokens.completion_tokens > 0
    assert s.server.limit.inflight == 0  # nothing leaked a concurrency slot

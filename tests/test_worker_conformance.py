"""`corea worker` speaks sglang.grpc.scheduler.SglangScheduler: every RPC through the generated stub.

One worker (WorkerService over the session's real SmolLM2 executor) serves the whole module on
loopback; token budgets stay small.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import zipfile

import grpc
import pytest
import torch
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.runtime.executor import Request, SamplingParams
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.worker_service import WorkerService

CAP = 64


@pytest.fixture(scope="module")
def worker(slm_executor):
    service = WorkerService(slm_executor, model_path=slm_executor.model_path, max_new_tokens=CAP, max_running_requests=16)
    with ServerThread(lambda: build_server(worker=service, port=0, host="127.0.0.1")) as server:
        channel = grpc.insecure_channel(server.address)
        yield pb_grpc.SglangSchedulerStub(channel)
        channel.close()


@pytest.fixture(scope="module")
def prompt_ids(slm_executor):
    return list(slm_executor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=True, return_dict=False))


def generate(stub, ids, *, request_id="", stream=False, timeout=120, **fields):
    """(chunks, complete) of one Generate call; fields split into request and sampling fields."""
    sampling = {k: fields.pop(k) for k in list(fields) if k in pb.SamplingParams.DESCRIPTOR.fields_by_name}
    msg = pb.GenerateRequest(request_id=request_id, tokenized=pb.TokenizedInput(input_ids=ids), stream=stream,
                             sampling_params=pb.SamplingParams(**sampling), **fields)
    out = list(stub.Generate(msg, timeout=timeout))
    assert out[-1].WhichOneof("response") == "complete" and all(r.WhichOneof("response") == "chunk" for r in out[:-1])
    return [r.chunk for r in out[:-1]], out[-1].complete


def loads(stub) -> int:
    return stub.GetLoads(pb.GetLoadsRequest()).loads[0].num_running_reqs


def wait_until_idle(stub, limit_s=60.0) -> int:
    deadline = time.monotonic() + limit_s
    while (running := loads(stub)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


# ---------------------------------------------------------------------------------------------- info
def test_health_model_and_server_info(worker, slm_executor):
    health = worker.HealthCheck(pb.HealthCheckRequest(), timeout=60)
    assert health.healthy, health.message
    info = worker.GetModelInfo(pb.GetModelInfoRequest())
    assert info.vocab_size == slm_executor.vocab_size == 49152
    assert 2 in info.eos_token_ids and info.is_generation and info.served_model_name == "smollm2-135m"
    assert info.max_context_length > 0 and info.tokenizer_path == str(slm_executor.model_path)
    server = worker.GetServerInfo(pb.GetServerInfoRequest())
    assert server.server_type == "grpc" and server.server_args["max_new_tokens"] == CAP
    assert server.server_args["max_running_requests"] == 16
    assert server.server_args["dtype"] == slm_executor.dtype == "float32"
    assert server.server_args["quantization"] == slm_executor.quantization == "none"
    assert server.server_args["runtime"] == "TorchExecutor: cpu, float32"


def test_get_tokenizer_bundle_rebuilds_the_tokenizer(worker, slm_executor, tmp_path):
    from transformers import AutoTokenizer

    chunks = list(worker.GetTokenizer(common_pb2.GetTokenizerRequest()))
    data = b"".join(c.data for c in chunks)
    assert [bool(c.sha256) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(archive.namelist())
        archive.extractall(tmp_path)
    remote = AutoTokenizer.from_pretrained(tmp_path)
    text = [{"role": "user", "content": "Is 17 prime?"}]
    assert remote.apply_chat_template(text, add_generation_prompt=True, tokenize=True, return_dict=False) == \
        slm_executor.tokenizer.apply_chat_template(text, add_generation_prompt=True, tokenize=True, return_dict=False)


# ---------------------------------------------------------------------------------------------- Generate
def test_stream_and_unary_agree_with_the_executor(worker, slm_executor, prompt_ids):
    chunks, complete = generate(worker, prompt_ids, stream=True, max_new_tokens=6)
    _, unary = generate(worker, prompt_ids, max_new_tokens=6)
    direct = slm_executor.generate(Request(input_ids=prompt_ids, sampling=SamplingParams(max_new_tokens=6)))
    streamed = [t for c in chunks for t in c.token_ids]
    assert streamed == list(complete.output_ids) == list(unary.output_ids) == direct.token_ids
    assert [c.completion_tokens for c in chunks] == list(range(1, len(chunks) + 1))  # cumulative
    assert all(c.prompt_tokens == len(prompt_ids) for c in chunks) and complete.prompt_tokens == len(prompt_ids)
    assert complete.completion_tokens == len(streamed)
    assert complete.finish_reason == ("length" if len(streamed) == 6 else "stop")


def test_eos_finishes_with_stop_and_the_matched_token(worker, prompt_ids):
    _, complete = generate(worker, prompt_ids, max_new_tokens=CAP)
    assert complete.finish_reason == "stop" and complete.matched_token_id == 2  # <|im_end|>
    assert 2 not in complete.output_ids


def test_token_ids_logprob_at_every_position_is_the_raw_log_softmax(worker, slm_executor, prompt_ids):
    watched = [28, 29, 33]  # token ids of "0", "1", "5"
    chunks, complete = generate(worker, prompt_ids, stream=True, max_new_tokens=4, token_ids_logprob=watched,
                                return_logprob=True, top_logprobs_num=3)
    out = list(complete.output_ids)
    rows = complete.output_logprobs.token_ids_logprobs
    assert len(rows) == len(out) and [len(c.output_logprobs.token_ids_logprobs) for c in chunks] == [1] * len(out)
    model = slm_executor.model
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + out])).logits[0, len(prompt_ids) - 1:-1].float()
    expected = torch.log_softmax(logits, dim=-1)
    for i, row in enumerate(rows):
        assert list(row.token_ids) == watched
        assert row.values == pytest.approx(expected[i, watched].tolist(), abs=1e-3)
    # Greedy: the emitted token is the most likely one, and its logprob tops the list.
    lp = complete.output_logprobs
    assert list(lp.token_ids) == out
    for i, top in enumerate(lp.top_logprobs):
        assert len(top.token_ids) == 3 and top.token_ids[0] == out[i]
        assert top.values[0] == pytest.approx(lp.token_logprobs[i], abs=1e-6)
        assert list(top.values) == sorted(top.values, reverse=True)


@pytest.mark.parametrize("kind,source,check", [
    ("json_schema", json.dumps({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}),
     lambda text: isinstance(json.loads(text)["answer"], int)),
    ("regex", r"[0-9]{1,3}", lambda text: re.fullmatch(r"[0-9]{1,3}", text) is not None),
    ("ebnf_grammar", 'root ::= "yes" | "no"', lambda text: text in ("yes", "no")),
])
def test_constraints_shape_the_output(worker, slm_executor, prompt_ids, kind, source, check):
    _, complete = generate(worker, prompt_ids, max_new_tokens=24, **{kind: source})
    text = slm_executor.tokenizer.decode(complete.output_ids)
    assert complete.finish_reason == "stop" and check(text), text


def test_stop_token_ids_and_stop_strings(worker, slm_executor, prompt_ids):
    _, free = generate(worker, prompt_ids, max_new_tokens=8)
    out = list(free.output_ids)
    _, stopped = generate(worker, prompt_ids, max_new_tokens=8, stop_token_ids=[out[2]])
    assert list(stopped.output_ids) == out[:out.index(out[2])] and stopped.matched_token_id == out[2]
    assert stopped.finish_reason == "stop"
    text = slm_executor.tokenizer.decode(out[:4])
    stop = text[-2:] if text[-2:].strip() else text[-3:]
    _, by_text = generate(worker, prompt_ids, max_new_tokens=8, stop=[stop])
    assert by_text.finish_reason == "stop" and by_text.matched_stop_str == stop
    assert len(by_text.output_ids) <= 4


def test_sampling_params_are_honoured(worker, prompt_ids):
    # top_k 1 is greedy whatever the temperature.
    _, greedy = generate(worker, prompt_ids, max_new_tokens=5)
    _, top1 = generate(worker, prompt_ids, max_new_tokens=5, temperature=1.5, top_k=1)
    assert list(top1.output_ids) == list(greedy.output_ids)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fields,code,named", [
    ({"ids": []}, grpc.StatusCode.INVALID_ARGUMENT, "input_ids"),
    ({"ids": [5, 49152]}, grpc.StatusCode.INVALID_ARGUMENT, "input_ids[1]"),
    ({"token_ids_logprob": [10**6]}, grpc.StatusCode.INVALID_ARGUMENT, "token_ids_logprob[0]"),
    ({"stop_token_ids": [10**6]}, grpc.StatusCode.INVALID_ARGUMENT, "stop_token_ids[0]"),
    ({"regex": "([0-9"}, grpc.StatusCode.INVALID_ARGUMENT, "regex"),
    ({"json_schema": "{not json"}, grpc.StatusCode.INVALID_ARGUMENT, "json_schema"),
    ({"ebnf_grammar": "root ::= missing_rule"}, grpc.StatusCode.INVALID_ARGUMENT, "ebnf"),
    ({"max_new_tokens": CAP + 1}, grpc.StatusCode.OUT_OF_RANGE, "max_new_tokens"),
    ({"max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
    ({"top_logprobs_num": 500, "return_logprob": True}, grpc.StatusCode.INVALID_ARGUMENT, "top_logprobs_num"),
    ({"n": 2}, grpc.StatusCode.INVALID_ARGUMENT, "n"),
    ({"frequency_penalty": 0.5}, grpc.StatusCode.INVALID_ARGUMENT, "frequency_penalty"),  # refused, not ignored
])
def test_bad_requests_get_a_status_naming_the_field(worker, prompt_ids, fields, code, named):
    ids = fields.pop("ids", prompt_ids)
    with pytest.raises(grpc.RpcError) as err:
        generate(worker, ids, **fields)
    assert err.value.code() == code and named in err.value.details(), err.value.details()
    _, complete = generate(worker, prompt_ids, max_new_tokens=1)  # still serving
    assert len(complete.output_ids) == 1


def test_a_request_id_in_flight_is_refused(worker, prompt_ids):
    call = worker.Generate(pb.GenerateRequest(request_id="twice", tokenized=pb.TokenizedInput(input_ids=prompt_ids),
                                              stream=True, sampling_params=pb.SamplingParams(max_new_tokens=CAP)))
    next(call)
    with pytest.raises(grpc.RpcError) as err:
        generate(worker, prompt_ids, request_id="twice", max_new_tokens=1)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    call.cancel()
    assert wait_until_idle(worker) == 0


# ---------------------------------------------------------------------------------------------- abort
def test_abort_by_request_id_completes_with_abort_and_frees_the_slot(worker, prompt_ids):
    call = worker.Generate(pb.GenerateRequest(request_id="to-abort", tokenized=pb.TokenizedInput(input_ids=prompt_ids),
                                              stream=True, sampling_params=pb.SamplingParams(max_new_tokens=CAP, regex="[a-z ]{60,}")))
    first = next(call)
    assert first.chunk.token_ids and loads(worker) == 1
    reply = worker.Abort(pb.AbortRequest(request_id="to-abort"))
    assert reply.success
    rest = list(call)
    assert rest[-1].complete.finish_reason == "abort" and len(rest[-1].complete.output_ids) < CAP
    assert wait_until_idle(worker) == 0
    assert not worker.Abort(pb.AbortRequest(request_id="to-abort")).success  # gone now


def test_a_cancelled_stream_aborts_its_request(worker, prompt_ids):
    call = worker.Generate(pb.GenerateRequest(request_id="to-cancel", tokenized=pb.TokenizedInput(input_ids=prompt_ids),
                                              stream=True, sampling_params=pb.SamplingParams(max_new_tokens=CAP,
                                                                                             regex="[a-z ]{60,}")))
    next(call)
    assert loads(worker) == 1
    call.cancel()
    assert wait_until_idle(worker) == 0


def test_a_deadline_aborts_the_request(worker, prompt_ids):
    with pytest.raises(grpc.RpcError) as err:
        generate(worker, prompt_ids, max_new_tokens=CAP, regex="[a-z ]{60,}", timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until_idle(worker) == 0


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_streams_each_get_their_own_tokens(worker, slm_executor):
    questions = ["What is 2 + 3?", "Name a colour.", "Say hello."]
    prompts = [list(slm_executor.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                                tokenize=True, return_dict=False)) for q in questions]
    alone = [list(generate(worker, ids, max_new_tokens=5)[1].output_ids) for ids in prompts]
    together, peak = [None] * len(prompts), []
    start = threading.Barrier(len(prompts) + 1)

    def run(i):
        start.wait()
        chunks, complete = generate(worker, prompts[i], stream=True, max_new_tokens=5)
        together[i] = ([t for c in chunks for t in c.token_ids], list(complete.output_ids))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    start.wait()
    while any(t.is_alive() for t in threads):
        peak.append(loads(worker))
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert [streamed for streamed, _ in together] == [complete for _, complete in together] == alone
    assert max(peak) >= 2  # they shared the batch


def test_a_slow_submit_stalls_no_other_stream(worker, slm_executor, prompt_ids, monkeypatch):
    """A submit held up (as by a new grammar's compile) runs off the server's loop: another
    stream starts and finishes meanwhile, then the slow one completes too."""
    submit, release, entered = slm_executor.submit, threading.Event(), threading.Event()

    def slow_first(request):  # the real submit, after a hold on the slow request
        if request.request_id == "slow":
            entered.set()
            release.wait(60)
        return submit(request)

    monkeypatch.setattr(slm_executor, "submit", slow_first)
    slow = worker.Generate(pb.GenerateRequest(  # the call starts now; its replies are read below
        request_id="slow", tokenized=pb.TokenizedInput(input_ids=prompt_ids),
        sampling_params=pb.SamplingParams(max_new_tokens=2)), timeout=120)
    try:
        assert entered.wait(60)
        chunks, complete = generate(worker, prompt_ids, stream=True, max_new_tokens=2, timeout=30)
        assert len(complete.output_ids) == 2 and not slow.done()
    finally:
        release.set()
    assert len(list(slow)[-1].complete.output_ids) == 2
    assert wait_until_idle(worker) == 0


def test_the_rpcs_it_does_not_serve_answer_unimplemented_and_it_keeps_serving(worker, prompt_ids):
    with pytest.raises(grpc.RpcError) as err:
        worker.FlushCache(common_pb2.FlushCacheRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "FlushCache" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # what SMG calls on every worker it registers
        list(worker.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(), timeout=30))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _, complete = generate(worker, prompt_ids, max_new_tokens=2)
    assert len(complete.output_ids) == 2


def test_the_server_wide_limit_holds_for_generate_and_leaves_the_other_rpcs_open(slm_executor, prompt_ids):
    """`corea worker --max-inflight 1`: a second Generate while one runs is RESOURCE_EXHAUSTED,
    GetLoads still answers, and the slot comes back when the first ends."""
    service = WorkerService(slm_executor, model_path=slm_executor.model_path, max_new_tokens=CAP)
    with ServerThread(lambda: build_server(worker=service, port=0, host="127.0.0.1", max_inflight=1)) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SglangSchedulerStub(channel)
        first = stub.Generate(pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=prompt_ids), stream=True,
                                                 sampling_params=pb.SamplingParams(max_new_tokens=CAP)), timeout=120)
        next(first)  # running: it holds the one slot
        with pytest.raises(grpc.RpcError) as err:
            generate(stub, prompt_ids, max_new_tokens=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in err.value.details()
        assert stub.GetLoads(pb.GetLoadsRequest(), timeout=30).loads[0].num_running_reqs == 1
        list(first)
        deadline = time.monotonic() + 10  # the slot is released as the handler returns, just after
        while server.server.limit.inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.server.limit.inflight == 0
        _, complete = generate(stub, prompt_ids, max_new_tokens=2)
        assert len(complete.output_ids) == 2

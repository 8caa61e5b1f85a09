"""SglangExecutor's threading, streaming and abort paths, driven by a replay of recorded chunks.

SGLang's Engine cannot run without a GPU. `ReplayEngine` has the two surfaces the executor uses
(`async_generate(..., stream=True)` returning an async iterator of chunks, and
`tokenizer_manager.abort_request(rid)`) and replays SGLang-shaped chunks built from a real
SmolLM2 run (sglang_helpers.recorded). What this covers is ours: the event-loop thread,
blocking and async streams, abort by SGLang rid, close. The engine itself is not exercised in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib

import pytest

from sglang_helpers import FORMATS_UNDER_TEST, recorded, request_for, sglang_chunks

from corea_engine.runtime.executor import ConfidenceEvent, ExecutorError, FinishedEvent, TokenEvent
from corea_engine.runtime.sglang_executor import SglangExecutor
from corea_engine.runtime.sglang_protocol import confidence_stop_regex


class ReplayEngine:
    """Replays scripted chunks for every request; an abort ends the replay with SGLang's abort chunk."""

    incremental_streaming_output = False

    def __init__(self, script, *, pause_before=None, finish_reported=True):
        self.script = script  # chunks as SGLang would stream them (their "id" is replaced by the rid)
        self.pause_before = pause_before  # chunk index at which to wait for an abort
        self.finish_reported = finish_reported
        self.calls, self.aborted, self.shut_down = [], [], False
        self.tokenizer_manager = self

    def abort_request(self, rid: str = "", abort_all: bool = False):
        self.aborted.append(rid)

    def shutdown(self):
        self.shut_down = True

    async def async_generate(self, **kwargs):
        assert kwargs["stream"] is True
        self.calls.append(kwargs)
        return self._replay(kwargs["rid"])

    async def _replay(self, rid):
        for i, chunk in enumerate(self.script):
            if i == self.pause_before:
                while rid not in self.aborted:
                    await asyncio.sleep(0.01)
            if rid in self.aborted:
                meta = {**chunk["meta_info"], "id": rid, "finish_reason": {"type": "abort", "message": "Abort in waiting queue"}}
                yield {**chunk, "meta_info": meta}
                return
            meta = dict(chunk["meta_info"], id=rid)
            if not self.finish_reported:
                meta["finish_reason"] = None
            yield {**chunk, "meta_info": meta}
            await asyncio.sleep(0)


def json_script(slm_executor, **kw):
    want, _, _, entries = recorded(slm_executor, "json")
    fmt = FORMATS_UNDER_TEST["json"]
    from corea_engine.runtime.sglang_executor import ChunkDecoder

    seq = ChunkDecoder(slm_executor.tokenizer).new_sequence(request_for("json"))
    finish = {"type": "stop", "matched": confidence_stop_regex(fmt)}
    return want, sglang_chunks(seq, want.token_ids, entries, finish, **kw)


def executor_over(engine, slm_executor):
    return SglangExecutor(engine=engine, tokenizer=slm_executor.tokenizer)


def test_blocking_generate_gives_the_torch_result(slm_executor):
    want, script = json_script(slm_executor)
    engine = ReplayEngine(script)
    with executor_over(engine, slm_executor) as executor:
        got = executor.generate(request_for("json"))
    assert (got.text, got.finish_reason, got.token_ids) == (want.text, "confidence", want.token_ids)
    assert abs(got.confidence.expected - want.confidence.expected) < 2e-4
    assert engine.shut_down and engine.calls[0]["token_ids_logprob"] == FORMATS_UNDER_TEST["json"].scale.token_ids(slm_executor.tokenizer)


def test_async_stream_and_concurrent_requests(slm_executor):
    want, script = json_script(slm_executor)
    executor = executor_over(ReplayEngine(script), slm_executor)

    async def consume():
        kinds, tokens = [], []
        async for event in executor.submit(request_for("json")):
            kinds.append(type(event))
            if isinstance(event, TokenEvent) and event.token_id is not None:  # None: the probe's suffix
                tokens.append(event.token_id)
        results = await asyncio.gather(*(executor.generate_async(request_for("json")) for _ in range(4)))
        return kinds, tokens, results

    try:
        kinds, tokens, results = asyncio.run(consume())
    finally:
        executor.close()
    assert kinds[-1] is FinishedEvent and kinds.count(ConfidenceEvent) == 1
    assert tokens == want.token_ids
    assert all(r.text == want.text and r.finish_reason == "confidence" for r in results)
    rids = [call["rid"] for call in executor.engine.calls]
    assert len(set(rids)) == 5  # one SGLang rid per request


def test_abort_reaches_sglang_by_rid(slm_executor):
    _, script = json_script(slm_executor)
    engine = ReplayEngine(script, pause_before=2)
    with executor_over(engine, slm_executor) as executor:
        request = request_for("json")
        stream = executor.submit(request)
        first = next(iter(stream))
        assert isinstance(first, TokenEvent)
        assert executor.abort(request.request_id) is True
        result = stream.wait(timeout=30)
        assert executor.abort(request.request_id) is False  # finished: nothing to abort
        assert executor.abort("no-such-request") is False
    assert result.finish_reason == "abort" and result.confidence is None
    assert engine.aborted[0] == engine.calls[0]["rid"]


def test_reading_the_confidence_first_stops_sglang_too(slm_executor):
    # If SGLang has not reported its stop yet when we read the confidence, we abort its side.
    _, script = json_script(slm_executor)
    engine = ReplayEngine(script, finish_reported=False)
    with executor_over(engine, slm_executor) as executor:
        result = executor.generate(request_for("json"))
    assert result.finish_reason == "confidence"
    assert engine.aborted == [engine.calls[0]["rid"]]


def test_close_finishes_running_requests_and_refuses_new_ones(slm_executor):
    _, script = json_script(slm_executor)
    engine = ReplayEngine(script, pause_before=2)
    executor = executor_over(engine, slm_executor)
    stream = executor.submit(request_for("json"))
    next(iter(stream))
    executor.close()
    assert stream.wait(timeout=30).finish_reason == "abort"
    assert engine.aborted == [engine.calls[0]["rid"]] and engine.shut_down
    with pytest.raises(ExecutorError, match="closed"):
        executor.submit(request_for("json"))


def test_engine_errors_finish_the_request_with_error(slm_executor):
    class FailingEngine(ReplayEngine):
        async def async_generate(self, **kwargs):
            raise ValueError("The input (9000 tokens) is longer than the model's context length (8192 tokens).")

    with executor_over(FailingEngine([]), slm_executor) as executor:
        result = executor.generate(request_for("json"))
    assert result.finish_reason == "error" and "context length" in result.error


@pytest.mark.expected_skip("where SGLang's engine imports (a GPU machine), starting it is benchmarks/gpu_sglang.py's job")
def test_sglang_backend_without_a_gpu_engine_says_so(slm_executor):
    from corea_engine.commands.common import add_model_args, make_executor

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--backend", "sglang", "--tp-size", "1", "--load-format", "dummy"])
    try:
        importlib.import_module("sglang.srt.entrypoints.engine")
    except ImportError:
        with pytest.raises(ExecutorError, match="needs a CUDA machine"):
            make_executor(args)
    else:
        pytest.skip("SGLang's engine imports here; starting one is the GPU script's job")

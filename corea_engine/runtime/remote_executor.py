"""An Executor whose model runs in an engine reached over the SglangScheduler protocol.

The SLM tier can live in `corea worker` or `sglang serve --grpc-mode` on a GPU while the cascade
runs unchanged:

  Request -> chat template (the engine's tokenizer) -> Generate(input ids, the grammar,
  token_ids_logprob = the confidence probe's token ids) -> streamed token ids -> the shared
  Sequence (sequence.py: incremental text, stop strings, the probe's trigger; at the confidence
  position a reading from the scale's log-probabilities) -> events and the Result.

The reading is the one the torch executor makes in process (probabilities normalised over the
scale, the mass on it, expected value, entropy, the sampled symbol), provided the engine reports
log-probabilities under the grammar mask as SGLang does. An answer-first request finishes on
the confidence step (the rest is forced) and its stream is cancelled, which aborts it in the
engine; `abort()` sends Abort at once and the request ends with the engine's finish_reason.

A request submitted inside an event loop (the cascade's) runs its gRPC call on that loop; one
submitted from a plain thread runs on this executor's own event-loop thread. Either way its stream
is consumed where it was opened.
"""

from __future__ import annotations

import asyncio
import threading

import grpc

from .executor import CONSTRAINT_PROTO_FIELDS, Executor, ExecutorError, Request, RequestStream
from .probe import resolve
from .scheduler_client import SchedulerClient, TokenizerError, pb
from .sequence import Sequence, encode_prompt


class _Call(Sequence):
    """One request's output (the shared Sequence) and the gRPC call that feeds it."""

    def __init__(self, request: Request, prompt_ids: list[int], tokenizer, *, grammar, probe, eos_token_ids):
        super().__init__(request, prompt_ids, tokenizer, probe=probe, eos_token_ids=eos_token_ids)
        self.grammar = grammar
        self.loop: asyncio.AbstractEventLoop | None = None  # where its gRPC call runs
        self.task: asyncio.Task | None = None
        self.abort_task: asyncio.Future | None = None


class RemoteExecutor(Executor):
    """The model of an engine at `address` (host:port) as an Executor.

    tokenizer: a local tokenizer folder, else the engine's (GetTokenizer). tls / token: as for
    SchedulerClient. Connects at construction (an engine still starting is waited for) and
    raises ExecutorError, naming the address, when it cannot be reached within connect_timeout_s.
    """

    def __init__(self, address: str, *, tokenizer: str | None = None, tls=None, token: str | None = None,
                 max_prompt_chars: int = 16000, connect_timeout_s: float = 30.0):
        self.client = SchedulerClient(address, tokenizer=tokenizer, tls=tls, token=token)
        self.max_prompt_chars = max_prompt_chars
        self._calls: dict[str, _Call] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corea-remote-executor", daemon=True)
        self._thread.start()
        try:
            self._run(self.client.connect(connect_timeout_s, wait_for_ready=True)).result()
        except (grpc.aio.AioRpcError, TokenizerError) as err:
            self.close()
            detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
            raise ExecutorError(f"cannot reach the engine at {address} within {connect_timeout_s:g} s: {detail}") from None
        self.model_name = self.client.model_name
        self.tokenizer = self.client.tokenizer

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # ------------------------------------------------------------------ Executor
    def submit(self, request: Request) -> RequestStream:
        request.validate(self.max_prompt_chars)
        request.check_token_ids(self.client.vocab_size)
        tokenizer = self.client.tokenizer
        grammar, probe = resolve(request, tokenizer)
        call = _Call(request, encode_prompt(tokenizer, request), tokenizer, grammar=grammar, probe=probe,
                     eos_token_ids=self.client.eos_token_ids)
        if self._loop.is_closed():
            raise ExecutorError("executor is closed")
        self._calls[request.request_id] = call
        try:
            call.loop = asyncio.get_running_loop()
            call.task = call.loop.create_task(self._generate(call))  # no thread hop on the caller's loop
        except RuntimeError:
            call.loop = self._loop
            self._loop.call_soon_threadsafe(self._start, call)
        return call.stream

    def abort(self, request_id: str) -> bool:
        call = self._calls.get(request_id)
        if call is None or call.finished:
            return False
        if _running_loop() is call.loop:
            call.abort_task = call.loop.create_task(self._abort(call))
        else:
            call.abort_task = asyncio.run_coroutine_threadsafe(self._abort(call), call.loop)
        return True

    def close(self) -> None:
        """Stop every request (they finish with 'abort') and the executor's own loop."""
        if self._loop.is_closed():
            return
        for call in list(self._calls.values()):  # calls on other loops: cancel there
            if call.loop is not self._loop and call.task is not None and not call.loop.is_closed():
                call.loop.call_soon_threadsafe(call.task.cancel)
        if self._thread.is_alive():
            self._run(self._shutdown()).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop.close()

    def load(self) -> tuple[int, int]:
        """(requests in flight to the engine, 0): the engine's own queue is its GetLoads."""
        return sum(not c.finished for c in list(self._calls.values())), 0

    # ------------------------------------------------------------------ the calls (loop thread)
    def _start(self, call: _Call) -> None:
        call.task = self._loop.create_task(self._generate(call))

    def _to_proto(self, call: _Call) -> pb.GenerateRequest:
        request, sampling = call.request, call.request.sampling
        params = pb.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                   max_new_tokens=request.max_new_tokens, stop=sampling.stop,
                                   stop_token_ids=sampling.stop_token_ids)
        if call.grammar is not None:
            setattr(params, CONSTRAINT_PROTO_FIELDS[call.grammar.kind], call.grammar.source)
        scale_ids = list(call.probe.token_ids) if call.probe is not None else []
        return pb.GenerateRequest(
            request_id=call.request.request_id,
            tokenized=pb.TokenizedInput(input_ids=call.prompt_ids),
            sampling_params=params,
            stream=True,
            # Only the scale's log-probabilities, and none for the prompt (-1).
            return_logprob=bool(scale_ids),
            logprob_start_len=-1,
            token_ids_logprob=scale_ids,
        )

    async def _generate(self, call: _Call) -> None:
        rpc = None
        finish, error, counts = "error", "the engine's stream ended without a result", None
        try:
            rpc = self.client.stub.Generate(self._to_proto(call), metadata=self.client.metadata)
            async for response in rpc:
                kind = response.WhichOneof("response")
                if kind == "chunk":
                    rows = response.chunk.output_logprobs.token_ids_logprobs
                    for i, token in enumerate(response.chunk.token_ids):
                        self._advance(call, token, rows[i] if i < len(rows) else None)
                        if call.finish_reason is not None:
                            break
                    if call.finish_reason is not None:  # ours (a stop string, the confidence): cancel the rest
                        break
                elif kind == "complete":
                    complete = response.complete
                    finish, error = complete.finish_reason or "stop", None
                    counts = complete.prompt_tokens, complete.completion_tokens
                    break
        except grpc.aio.AioRpcError as err:
            finish, error = "error", f"engine at {self.client.address}: {err.code().name}: {err.details()}"
        except ExecutorError as err:
            finish, error = "error", str(err)
        except asyncio.CancelledError:  # abort() without the engine's acknowledgement, or close()
            finish, error = "abort", None
        except Exception as err:  # anything else still ends the caller's stream, with the reason
            finish, error = "error", f"{type(err).__name__}: {err}"
        finally:
            if rpc is not None and not rpc.done():
                rpc.cancel()  # a cancelled stream aborts the request in the engine
            self._finish(call, finish, error, counts)

    def _advance(self, call: _Call, token: int, logprobs) -> None:
        """Take one generated token; the engine's end-of-sequence token is not part of the text (the
        engine's Complete message then finishes the request)."""
        if call.stops_on(token):
            return
        record = None
        if call.armed:
            if logprobs is None:
                raise ExecutorError(f"the engine at {self.client.address} returned no token_ids_logprob "
                                    "at the confidence position")
            record = call.probe.record_from_logprobs(dict(zip(logprobs.token_ids, logprobs.values)))
        call.step(token, record=record)

    def _finish(self, call: _Call, finish: str, error: str | None, counts) -> None:
        self._calls.pop(call.request_id, None)
        call.finish(finish, error, usage=counts)

    async def _abort(self, call: _Call) -> None:
        """Abort in the engine; the stream then ends with its finish_reason ('abort')."""
        try:
            if await self.client.abort(call.request.request_id, "the cascade deferred"):
                return
        except grpc.aio.AioRpcError:
            pass
        if call.task is not None:  # not acknowledged: cancelling the stream aborts it too
            call.task.cancel()

    async def _shutdown(self) -> None:
        """On the executor's own loop: cancel its calls, close its channel."""
        tasks = [c.task for c in self._calls.values()
                 if c.loop is self._loop and c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

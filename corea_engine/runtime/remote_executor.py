"""An Executor whose model runs in an engine reached over the SglangScheduler protocol.

The SLM tier can live in `corea worker` or `sglang serve --grpc-mode` on a GPU while the cascade
runs unchanged:

  Request -> chat template (the engine's tokenizer) -> Generate(input ids, the contract's EBNF
  grammar, token_ids_logprob = the confidence scale's token ids) -> streamed token ids
  -> TokenEvents (detokenized here) -> at the confidence position a ConfidenceReading from the
  scale's log-probabilities -> FinishedEvent.

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
import time
from dataclasses import dataclass, field

import grpc

from ..contract import Format
from ..tokenization import ChatTemplateError
from .executor import (
    ConfidenceEvent,
    ConfidenceReading,
    Executor,
    ExecutorError,
    FinishedEvent,
    InvalidRequestError,
    Request,
    RequestStream,
    Result,
    TokenEvent,
)
from .scheduler_client import SchedulerClient, TokenizerError, decode_delta, pb


@dataclass
class _Call:
    request: Request
    stream: RequestStream
    prompt_ids: list[int]
    fmt: Format | None
    scale_ids: list[int]
    started: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    text: str = ""
    at_confidence: bool = False
    confidence: ConfidenceReading | None = None
    confidence_at: float | None = None
    loop: asyncio.AbstractEventLoop | None = None  # where its gRPC call runs
    task: asyncio.Task | None = None
    abort_task: asyncio.Future | None = None
    finished: bool = False


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
        self._scales: dict = {}
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
        fmt = request.format
        try:
            prompt_ids = (list(request.input_ids) if request.input_ids is not None
                          else self.client.encode(request.messages, request.prompt))
        except ChatTemplateError as err:
            raise InvalidRequestError(str(err)) from None
        call = _Call(request, RequestStream(request.request_id), prompt_ids, fmt,
                     self._scale_ids(fmt) if fmt is not None else [])
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

    def _scale_ids(self, fmt: Format) -> list[int]:
        if fmt.scale not in self._scales:
            self._scales[fmt.scale] = fmt.scale.token_ids(self.client.tokenizer)
        return self._scales[fmt.scale]

    # ------------------------------------------------------------------ the calls (loop thread)
    def _start(self, call: _Call) -> None:
        call.task = self._loop.create_task(self._generate(call))

    def _to_proto(self, call: _Call) -> pb.GenerateRequest:
        request, sampling = call.request, call.request.sampling
        params = pb.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                   max_new_tokens=request.max_new_tokens, stop=sampling.stop,
                                   stop_token_ids=sampling.stop_token_ids)
        if call.fmt is not None:
            params.ebnf_grammar = call.fmt.ebnf()
        elif request.constraint is not None:
            kind = {"ebnf": "ebnf_grammar"}.get(request.constraint.kind, request.constraint.kind)
            setattr(params, kind, request.constraint.source)
        return pb.GenerateRequest(
            request_id=call.request.request_id,
            tokenized=pb.TokenizedInput(input_ids=call.prompt_ids),
            sampling_params=params,
            stream=True,
            # Only the scale's log-probabilities, and none for the prompt (-1).
            return_logprob=bool(call.scale_ids),
            logprob_start_len=-1,
            token_ids_logprob=call.scale_ids,
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
                        if self._advance(call, token, rows[i] if i < len(rows) else None):
                            finish, error = "confidence", None
                            break
                    if finish == "confidence":
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

    def _advance(self, call: _Call, token: int, logprobs) -> bool:
        """Take one generated token; True when the request is done (its confidence is read)."""
        if token in self.client.eos_token_ids:
            return False  # the end of the sequence, not part of the text
        call.generated.append(token)
        delta, call.text = decode_delta(self.client.tokenizer, call.generated, call.text)
        call.stream.push(TokenEvent(call.request.request_id, token, delta))
        fmt = call.fmt
        if call.at_confidence:
            call.at_confidence = False
            if logprobs is None:
                raise ExecutorError(f"the engine at {self.client.address} returned no token_ids_logprob "
                                    "at the confidence position")
            self._read_confidence(call, token, logprobs)
            if not fmt.confidence_first and call.request.stop_at_confidence:
                call.text += fmt.confidence_suffix
                return True
        elif fmt is not None and call.confidence is None and call.text.endswith(fmt.confidence_prefix):
            call.at_confidence = True
        return False

    def _read_confidence(self, call: _Call, token: int, row) -> None:
        by_id = dict(zip(row.token_ids, row.values))
        scale = call.fmt.scale
        symbol = self.client.tokenizer.decode([token])
        symbol = symbol if symbol in scale.symbols else symbol[:1]
        if symbol not in scale.symbols:
            raise ExecutorError(f"the engine wrote {symbol!r} at the confidence position (no grammar applied?)")
        sampled = scale.value_of(symbol)
        logprobs = [by_id.get(i, float("-inf")) for i in call.scale_ids]
        call.confidence = ConfidenceReading.from_logprobs(logprobs, scale.values, sampled, len(call.generated) - 1)
        call.confidence_at = time.perf_counter()
        call.stream.push(ConfidenceEvent(call.request.request_id, call.confidence))

    def _finish(self, call: _Call, finish: str, error: str | None, counts) -> None:
        parsed = parse_error = None
        if call.fmt is not None and finish in ("stop", "confidence", "length"):
            try:
                parsed = call.fmt.parse(call.text)
            except ValueError as err:
                parse_error = str(err)
        prompt_tokens, completion_tokens = counts or (len(call.prompt_ids), len(call.generated))
        result = Result(
            request_id=call.request.request_id, text=call.text, finish_reason=finish,
            prompt_tokens=prompt_tokens or len(call.prompt_ids), completion_tokens=completion_tokens,
            parsed=parsed, parse_error=parse_error, confidence=call.confidence, error=error,
            latency_s=time.perf_counter() - call.started,
            time_to_confidence_s=None if call.confidence_at is None else call.confidence_at - call.started,
            token_ids=list(call.generated),
        )
        call.finished = True
        self._calls.pop(call.request.request_id, None)
        call.stream.push(FinishedEvent(call.request.request_id, result))

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

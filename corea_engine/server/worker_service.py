"""`sglang.grpc.scheduler.SglangScheduler` over any Executor: the engines' own gRPC protocol.

SGLang (`--grpc-mode`) and vLLM (`serve --grpc`) serve this protocol to the Shepherd Model Gateway
(SMG); `corea worker` serves it too, so a gateway, our escalation client and a real engine are
interchangeable. The messages come from PyPI `smg-grpc-proto`, used as generated.

Semantics kept from the reference servicer (smg-grpc-servicer's sglang/servicer.py):
- Generate takes token ids. With `stream` it sends one chunk per token (incremental token ids and
  logprob rows, cumulative counts) and then one complete message; without, the complete message
  only. Complete is cumulative: every output id, every logprob row.
- finish_reason is "stop" (EOS, a stop token id, a stop string, the grammar's end), "length" or
  "abort" (Abort RPC); the matched stop token id or string rides along.
- Errors are gRPC status codes, never a message: INVALID_ARGUMENT for a bad field (named),
  OUT_OF_RANGE for max_new_tokens over the cap, ALREADY_EXISTS for a request id in flight,
  DEADLINE_EXCEEDED, UNAVAILABLE when the runtime stops, INTERNAL when generation fails. A cancelled
  stream aborts its request, which frees its batch slot.
- GetTokenizer streams a zip of the model folder's tokenizer files in 64 KiB chunks, the SHA-256
  of the whole archive on the last one.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from ..runtime.executor import (
    CONSTRAINT_PROTO_FIELDS,
    DEFAULT_FREE_TEXT_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    Constraint,
    Executor,
    ExecutorError,
    FinishedEvent,
    InvalidRequestError,
    OutOfRangeError,
    Request,
    SamplingParams,
    TokenEvent,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SglangScheduler"].full_name
CHUNK_BYTES = 64 * 1024
HEALTH_PROBE_S = 20.0
# What SMG's tokenizer loader reads: tokenizer, its config, chat template, model config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.json", "chat_template.jinja",
                   "config.json", "generation_config.json")
_CONSTRAINT_KINDS = {field: kind for kind, field in CONSTRAINT_PROTO_FIELDS.items()}  # proto field -> kind


class WorkerService(pb_grpc.SglangSchedulerServicer):
    """The protocol's servicer. model_path: the model folder (GetTokenizer, GetModelInfo);
    max_new_tokens: the cap a request may ask for (above it: OUT_OF_RANGE)."""

    def __init__(self, executor: Executor, *, model_path: str | Path | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS_LIMIT, max_running_requests: int = 0):
        self.executor = executor
        self.model_path = Path(model_path) if model_path is not None else None
        self.max_new_tokens = min(max_new_tokens, MAX_NEW_TOKENS_LIMIT)
        self.max_running_requests = max_running_requests
        self.started = time.time()
        self.active: set[str] = set()  # request ids of Generate calls in flight
        self.aborted: set[str] = set()  # ... that an Abort call stopped (they complete with "abort")
        self.last_receive = 0.0
        self.calls = 0  # Generate calls received
        self.aborts = 0  # requests an Abort call stopped
        self._tokenizer_zip: tuple[bytes, str] | None = None

    # ------------------------------------------------------------------ Generate
    async def Generate(self, msg: pb.GenerateRequest, context):
        self.last_receive = time.time()
        self.calls += 1
        request_id = msg.request_id or f"gen-{uuid.uuid4().hex[:12]}"
        if request_id in self.active:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"request_id {request_id!r} is already running")
        self.active.add(request_id)  # before the submit's await: the same id meanwhile is refused
        try:
            request = self.to_request(msg, request_id)
            # Off the loop: tokenizing and a grammar compile must not stall the other streams.
            stream = await self.executor.submit_async(request)
        except BaseException as err:
            self.active.discard(request_id)
            if isinstance(err, OutOfRangeError):
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(err))
            if isinstance(err, InvalidRequestError):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            if isinstance(err, ExecutorError):
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
            raise
        prompt_tokens = len(msg.tokenized.input_ids)
        rows: list = []  # (TokenEvent) of every output token
        result = None
        try:
            async with asyncio.timeout(context.time_remaining()):
                async for event in stream:
                    if isinstance(event, TokenEvent) and event.token_id is not None:  # the wire carries ids
                        rows.append(event)
                        if msg.stream:
                            yield pb.GenerateResponse(request_id=request_id, chunk=pb.GenerateStreamChunk(
                                token_ids=[event.token_id], prompt_tokens=prompt_tokens,
                                completion_tokens=len(rows), output_logprobs=_logprobs(request, [event])))
                    elif isinstance(event, FinishedEvent):
                        result = event.result
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed during generation")
        finally:
            self.active.discard(request_id)
            by_abort_call = request_id in self.aborted
            self.aborted.discard(request_id)
            if result is None:  # cancelled by the client, or the deadline: free the slot
                self.executor.abort(request_id)
        if result.finish_reason == "error":
            await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {result.error}")
        if result.finish_reason == "abort" and not by_abort_call:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model runtime stopped this request")
        finish = {"length": "length", "abort": "abort"}.get(result.finish_reason, "stop")
        matched = {}
        if isinstance(result.matched_stop, int):
            matched["matched_token_id"] = result.matched_stop
        elif isinstance(result.matched_stop, str):
            matched["matched_stop_str"] = result.matched_stop
        yield pb.GenerateResponse(request_id=request_id, complete=pb.GenerateComplete(
            output_ids=[e.token_id for e in rows], finish_reason=finish, prompt_tokens=prompt_tokens,
            completion_tokens=len(rows), output_logprobs=_logprobs(request, rows), **matched))

    def to_request(self, msg: pb.GenerateRequest, request_id: str) -> Request:
        """The Executor request of a GenerateRequest; InvalidRequestError names the bad field."""
        sp = msg.sampling_params
        # Refused rather than ignored: an answer that silently skipped one would look right and not be.
        unsupported = [name for name, used in (
            ("mm_inputs", msg.HasField("mm_inputs") and msg.mm_inputs.ByteSize() > 0),
            ("input_embeds", bool(msg.input_embeds)), ("lora_id", bool(msg.lora_id)),
            ("custom_logit_processor", bool(msg.custom_logit_processor)),
            ("return_hidden_states", msg.return_hidden_states), ("sampling_params.n", sp.n > 1),
            ("sampling_params.structural_tag", sp.HasField("structural_tag")),
            ("sampling_params.logit_bias", bool(sp.logit_bias)), ("sampling_params.min_p", sp.min_p > 0),
            ("sampling_params.frequency_penalty", sp.frequency_penalty != 0),
            ("sampling_params.presence_penalty", sp.presence_penalty != 0),
            ("sampling_params.repetition_penalty", sp.repetition_penalty not in (0, 1)),
            ("sampling_params.min_new_tokens", sp.min_new_tokens > 0), ("sampling_params.ignore_eos", sp.ignore_eos),
        ) if used]
        if unsupported:
            raise InvalidRequestError(f"{', '.join(unsupported)}: not supported by this worker")
        constraint = None
        which = sp.WhichOneof("constraint")
        if which is not None:
            constraint = Constraint(_CONSTRAINT_KINDS[which], getattr(sp, which))
        max_new = sp.max_new_tokens if sp.HasField("max_new_tokens") else None
        if max_new is not None and max_new > self.max_new_tokens:
            raise OutOfRangeError(f"sampling_params.max_new_tokens is {max_new}; this worker grants at most "
                                  f"{self.max_new_tokens}")
        # proto3 zeros mean "unset" for these (as in the reference servicer): top_p 0 -> 1, top_k 0 -> off.
        sampling = SamplingParams(
            temperature=sp.temperature, top_p=sp.top_p or 1.0, top_k=sp.top_k or -1,
            max_new_tokens=max_new if max_new is not None else min(DEFAULT_FREE_TEXT_TOKENS, self.max_new_tokens),
            stop=tuple(sp.stop), stop_token_ids=tuple(sp.stop_token_ids))
        return Request(
            input_ids=list(msg.tokenized.input_ids), constraint=constraint, sampling=sampling, request_id=request_id,
            logprob_token_ids=tuple(msg.token_ids_logprob), return_logprob=msg.return_logprob,
            top_logprobs_num=msg.top_logprobs_num if msg.return_logprob else 0)

    # ------------------------------------------------------------------ control
    async def Abort(self, msg: pb.AbortRequest, context):
        known = msg.request_id in self.active
        if known:
            self.aborted.add(msg.request_id)
            known = self.executor.abort(msg.request_id)
            self.aborts += known
        return pb.AbortResponse(success=known, message=f"request {msg.request_id} {'aborted' if known else 'not found'}")

    async def HealthCheck(self, msg, context):
        """Healthy when a one-token generation comes back within HEALTH_PROBE_S seconds."""
        probe = Request(input_ids=[0], sampling=SamplingParams(max_new_tokens=1), request_id=f"health-{uuid.uuid4().hex[:8]}")
        try:
            stream = await self.executor.submit_async(probe)
            async with asyncio.timeout(HEALTH_PROBE_S):
                async for event in stream:
                    if isinstance(event, FinishedEvent) and event.result.finish_reason in ("stop", "length"):
                        return pb.HealthCheckResponse(healthy=True, message="generated a token")
        except ExecutorError as err:
            return pb.HealthCheckResponse(healthy=False, message=f"runtime unavailable: {err}")
        except TimeoutError:
            self.executor.abort(probe.request_id)
            return pb.HealthCheckResponse(healthy=False, message=f"no token within {HEALTH_PROBE_S:.0f} s")
        return pb.HealthCheckResponse(healthy=False, message="the probe did not finish")

    # ------------------------------------------------------------------ information
    async def GetModelInfo(self, msg, context):
        tokenizer = self.executor.tokenizer
        config = getattr(getattr(self.executor, "model", None), "config", None)
        eos = getattr(self.executor, "eos_token_ids", None) or [tokenizer.eos_token_id]
        return pb.GetModelInfoResponse(
            model_path=str(self.model_path or self.executor.model_name),
            tokenizer_path=str(self.model_path or ""), is_generation=True,
            served_model_name=self.executor.model_name,
            max_context_length=int(getattr(config, "max_position_embeddings", 0) or 0),
            vocab_size=int(getattr(self.executor, "vocab_size", len(tokenizer))),
            model_type=getattr(config, "model_type", "") or "",
            architectures=list(getattr(config, "architectures", None) or []),
            eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1,
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1,
            max_req_input_len=int(getattr(self.executor, "max_prompt_tokens", 0) or 0))

    async def GetServerInfo(self, msg, context):
        args = Struct()
        args.update({"model_path": str(self.model_path or self.executor.model_name),
                     "served_model_name": self.executor.model_name,
                     "runtime": ": ".join(filter(None, (type(self.executor).__name__, self.executor.runtime))),
                     "max_running_requests": self.max_running_requests, "max_new_tokens": self.max_new_tokens,
                     "grammar_backend": "xgrammar", "dtype": getattr(self.executor, "dtype", ""),
                     "quantization": getattr(self.executor, "quantization", "none")})
        start = Timestamp()
        start.FromSeconds(int(self.started))
        return pb.GetServerInfoResponse(
            server_args=args, active_requests=len(self.active), is_paused=False,
            last_receive_timestamp=self.last_receive, uptime_seconds=time.time() - self.started,
            server_type="grpc", start_time=start)

    async def GetLoads(self, msg, context):
        running, waiting = self.executor.load()
        load = pb.SchedulerLoad(
            dp_rank=0, num_running_reqs=running, num_waiting_reqs=waiting, num_total_reqs=running + waiting,
            max_running_requests=self.max_running_requests,
            utilization=running / self.max_running_requests if self.max_running_requests else 0.0)
        return pb.GetLoadsResponse(
            timestamp=datetime.now(timezone.utc).isoformat(), dp_rank_count=1, loads=[load],
            aggregate=pb.AggregateMetrics(total_running_reqs=running, total_waiting_reqs=waiting,
                                          total_reqs=running + waiting, avg_utilization=load.utilization))

    async def GetTokenizer(self, msg, context):
        if self.model_path is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this worker has no model folder to send")
        if self._tokenizer_zip is None:  # file I/O and deflate: off the event loop, once
            self._tokenizer_zip = await asyncio.to_thread(tokenizer_zip, self.model_path)
        data, sha256 = self._tokenizer_zip
        for start in range(0, len(data), CHUNK_BYTES):
            end = min(start + CHUNK_BYTES, len(data))
            yield common_pb2.GetTokenizerChunk(data=data[start:end], sha256=sha256 if end == len(data) else "")


def tokenizer_zip(folder: Path) -> tuple[bytes, str]:
    """(zip bytes of the folder's tokenizer files, their SHA-256 hex digest)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        names = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if "tokenizer.json" not in names and "tokenizer.model" not in names:
            raise FileNotFoundError(f"no tokenizer files in {folder}")
        for name in names:
            archive.write(folder / name, name)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _logprobs(request: Request, events: list[TokenEvent]) -> pb.OutputLogProbs | None:
    """The OutputLogProbs rows of these tokens, or None when the request asked for none."""
    if not request.wants_logprobs:
        return None
    out = pb.OutputLogProbs()
    for event in events:
        lp = event.logprobs
        if request.return_logprob:
            out.token_logprobs.append(lp.logprob)
            out.token_ids.append(event.token_id)
            out.top_logprobs.append(pb.TopLogProbs(values=[v for _, v in lp.top], token_ids=[t for t, _ in lp.top]))
        if request.logprob_token_ids:
            out.token_ids_logprobs.append(pb.TopLogProbs(values=lp.selected, token_ids=request.logprob_token_ids))
    return out


# Optional RPCs of the protocol that this worker does not serve. The generated base class raises
# NotImplementedError for them, which grpc logs as a crash (SMG calls SubscribeKvEvents on every
# worker it registers): answer UNIMPLEMENTED plainly instead, as a gateway expects.
NOT_SERVED = ("Embed", "FlushCache", "StartProfile", "StopProfile", "SubscribeKvEvents",
              "LoadLoRAAdapter", "UnloadLoRAAdapter", "ListLoadedLoRAAdapters")


def _not_served(name: str):
    async def handler(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"corea worker does not serve {name}")
    handler.__name__ = name
    return handler


for _name in NOT_SERVED:
    setattr(WorkerService, _name, _not_served(_name))

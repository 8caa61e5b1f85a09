"""The engines' gRPC protocol, client side: `sglang.grpc.scheduler.SglangScheduler`.

SGLang (`--grpc-mode`), vLLM (`serve --grpc`) and `corea worker` serve it; the generated stub of
`smg-grpc-proto` is used as it is. The protocol speaks token ids, so a client needs the tier's
tokenizer: `SchedulerClient.connect()` takes it from a local folder or from the engine's
GetTokenizer (a zip whose SHA-256 rides on the last chunk; verified, then unpacked once per
digest under `<cache>/tokenizers/`). Both remote tiers use this one client:
escalation.grpc_llm (the LLM) and runtime.remote_executor (an SLM in another process).

Channels belong to the event loop that made them (grpc.aio), so there is one per loop (kept
while the loop lives; `close()` closes them all); they reconnect within a second (100 ms to 1 s
backoff) so a restarted engine is found again quickly. Concurrent first calls on a loop share
one `connect()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path

import grpc
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from ..models import cache_dir
from ..per_loop import PerLoop
from ..tokenization import encode_chat

__all__ = ["CHANNEL_OPTIONS", "REQUEST_ERRORS", "SchedulerClient", "TokenizerError", "pb"]

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# Codes that mean "this request is wrong": retrying cannot help and the engine is not unhealthy.
REQUEST_ERRORS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
})


class TokenizerError(RuntimeError):
    """The engine's tokenizer could not be had (transfer, digest, or files)."""


class SchedulerClient:
    """One engine behind the SglangScheduler protocol.

    address: host:port. tokenizer: a local tokenizer folder, else the engine's (GetTokenizer).
    tls: a server.tls.ClientTLS or None; token: a bearer token sent with every call.
    After `await connect()`: `tokenizer`, `model_name`, `eos_token_ids`, `vocab_size`.
    """

    def __init__(self, address: str, *, tokenizer: str | os.PathLike | None = None, tls=None,
                 token: str | None = None, channel_options=CHANNEL_OPTIONS):
        self.address = address
        self.tokenizer_path = tokenizer
        self.tokenizer = None
        self.model_name = address  # replaced by the name the engine reports
        self.eos_token_ids: frozenset[int] = frozenset()
        self.vocab_size = 0
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._options = list(channel_options) + (tls.channel_options() if tls else [])
        self._credentials = tls.credentials() if tls else None
        self._channels = PerLoop(self._open, lambda entry: entry[0].close())  # (channel, stub) per loop
        self._connecting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> asyncio.Lock

    @property
    def stub(self) -> pb_grpc.SglangSchedulerStub:
        """The generated stub on this client's channel of the running event loop."""
        return self._channels.get()[1]

    def _open(self) -> tuple[grpc.aio.Channel, pb_grpc.SglangSchedulerStub]:
        channel = (grpc.aio.secure_channel(self.address, self._credentials, options=self._options)
                   if self._credentials else grpc.aio.insecure_channel(self.address, options=self._options))
        return channel, pb_grpc.SglangSchedulerStub(channel)

    @property
    def connected(self) -> bool:
        return self.tokenizer is not None

    async def connect(self, timeout_s: float | None = 30.0, *, wait_for_ready: bool = False) -> None:
        """Read the model's description and load its tokenizer (once).

        wait_for_ready: wait up to timeout_s for an engine that is still starting (or restarting)
        instead of failing at once. Raises grpc.aio.AioRpcError when the engine does not answer,
        TokenizerError when its tokenizer cannot be had.
        """
        if self.connected:
            return
        lock = self._connecting.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:  # one GetModelInfo and one tokenizer transfer for concurrent first calls
            if not self.connected:
                await self._connect(timeout_s, wait_for_ready)

    async def _connect(self, timeout_s: float | None, wait_for_ready: bool) -> None:
        info = await self.model_info(timeout_s, wait_for_ready=wait_for_ready)
        folder = self.tokenizer_path or await self._fetch_tokenizer(timeout_s)
        from transformers import AutoTokenizer

        try:
            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(folder))
        except (OSError, ValueError) as err:
            raise TokenizerError(f"cannot load the tokenizer of {self.address} from {folder}: {err}") from None
        self.eos_token_ids = frozenset(info.eos_token_ids)
        self.vocab_size = info.vocab_size
        self.tokenizer = tokenizer

    async def model_info(self, timeout_s: float | None = 30.0, *,
                         wait_for_ready: bool = False) -> pb.GetModelInfoResponse:
        """GetModelInfo (it runs no model); sets `model_name` to the name the engine serves under
        (its model path when it reports none). Raises grpc.aio.AioRpcError."""
        info = await self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout_s, metadata=self.metadata,
                                            wait_for_ready=wait_for_ready)
        self.model_name = info.served_model_name or info.model_path or self.address
        return info

    async def _fetch_tokenizer(self, timeout_s: float | None) -> Path:
        data = io.BytesIO()
        digest = ""
        async for chunk in self.stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=timeout_s,
                                                  metadata=self.metadata):
            data.write(chunk.data)
            digest = chunk.sha256 or digest
        blob = data.getvalue()
        actual = hashlib.sha256(blob).hexdigest()
        if not digest or actual != digest:
            raise TokenizerError(f"the tokenizer from {self.address} is corrupt: sha256 {actual}, "
                                 f"announced {digest or 'nothing'}")
        return await asyncio.to_thread(_unpack, blob, digest)

    def encode(self, messages: list[dict] | None = None, prompt: str | None = None) -> list[int]:
        """Token ids of chat `messages` (the chat template, generation prompt added) or of a raw prompt.
        Message text stays text (tokenization.encode_chat): "<|im_end|>" in a question is no turn
        marker. Raises tokenization.ChatTemplateError (a ValueError) when the template rewrites a message."""
        if messages is None:
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return encode_chat(self.tokenizer, messages)

    async def abort(self, request_id: str, reason: str = "", timeout_s: float = 5.0) -> bool:
        """Abort a request by id; True when the engine acknowledged it."""
        reply = await self.stub.Abort(pb.AbortRequest(request_id=request_id, reason=reason), timeout=timeout_s,
                                      metadata=self.metadata)
        return reply.success

    async def close(self) -> None:
        """Close the channels of every loop (PerLoop.close)."""
        await self._channels.close()


def _unpack(blob: bytes, digest: str) -> Path:
    """The tokenizer zip unpacked under the cache, once per digest (atomic rename)."""
    target = cache_dir() / "tokenizers" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                archive.extractall(staging)  # extractall keeps every member inside `staging`
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise TokenizerError(f"cannot unpack the tokenizer bundle into {staging}: "
                                 f"{type(err).__name__}: {err}") from None
        # The bundle may hold the files at its root or inside one folder.
        entries = list(staging.iterdir())
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        try:
            source.rename(target)
        except OSError as err:
            if not target.is_dir():  # else another process unpacked the same digest first
                raise TokenizerError(f"cannot place the tokenizer at {target}: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""TEST FIXTURE: a small OpenAI-compatible chat completions server over the real SmolLM2.

Not the product's HTTP front. It exists so that the OpenAI escalation client is exercised
against a real server on loopback, the way vLLM, SGLang or llama.cpp serve it: FastAPI and
uvicorn, SSE streaming, `response_format` json_schema enforced with xgrammar, the model's own
chat template (message text encoded as text). Generation is transformers' `generate` with
xgrammar's logits processor.

`report_usage` can be switched off to behave like endpoints that stream no usage report;
`bodies` keeps every request body received, so tests can see what the client sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import torch
import uvicorn
import xgrammar as xgr
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import TextIteratorStreamer

from corea_engine.tokenization import encode_chat


class OpenAICompatServer:
    def __init__(self, model, tokenizer, *, model_name: str = "smollm2-135m", report_usage: bool = True):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.report_usage = report_usage
        self.bodies: list[dict] = []
        vocab = model.get_output_embeddings().weight.shape[0]
        self._compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab))
        self._lock = threading.Lock()  # one generation at a time, as a small server would
        self.app = self._make_app()
        self._server: uvicorn.Server | None = None
        self.port = 0

    # -- HTTP ---------------------------------------------------------------------------------
    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            self.bodies.append(body)
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise HTTPException(400, "messages must be a non-empty list")
            job = self._start(body)
            if body.get("stream"):
                return StreamingResponse(self._sse(job, body), media_type="text/event-stream")
            text = "".join([piece async for piece in _pieces(job["streamer"])])
            await asyncio.to_thread(job["thread"].join)
            return JSONResponse({
                "id": job["id"], "object": "chat.completion", "created": int(time.time()), "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": job["finish"]}],
                **({"usage": self._usage(job)} if self.report_usage else {}),
            })

        return app

    async def _sse(self, job, body):
        def event(choices, **extra):
            chunk = {"id": job["id"], "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": self.model_name, "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        async for piece in _pieces(job["streamer"]):
            if piece:
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await asyncio.to_thread(job["thread"].join)
        yield event([{"index": 0, "delta": {}, "finish_reason": job["finish"]}])
        if self.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            yield event([], usage=self._usage(job))
        yield "data: [DONE]\n\n"

    # -- generation ---------------------------------------------------------------------------
    def _start(self, body: dict) -> dict:
        ids = encode_chat(self.tokenizer, body["messages"])
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        temperature = float(body.get("temperature") or 0.0)
        processors = []
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = fmt["json_schema"]["schema"]
            compiled = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
            processors.append(xgr.contrib.hf.LogitsProcessor(compiled))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        job = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "streamer": streamer, "prompt_tokens": len(ids),
               "completion_tokens": 0, "finish": "stop"}

        def run():
            with self._lock, torch.no_grad():
                out = self.model.generate(
                    torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature or None,
                    top_p=None, top_k=None, logits_processor=processors, streamer=streamer,
                    pad_token_id=self.tokenizer.eos_token_id,
                )
            new = out[0, len(ids):].tolist()
            ended = bool(new) and new[-1] == self.tokenizer.eos_token_id
            job["completion_tokens"] = len(new)
            job["finish"] = "stop" if ended or len(new) < max_tokens else "length"

        job["thread"] = threading.Thread(target=run, daemon=True)
        job["thread"].start()
        return job

    @staticmethod
    def _usage(job) -> dict:
        p, c = job["prompt_tokens"], job["completion_tokens"]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "OpenAICompatServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self._thread = thread
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


async def _pieces(streamer: TextIteratorStreamer):
    """The streamer's text pieces, read off the event loop."""
    done = object()
    while True:
        piece = await asyncio.to_thread(next, streamer, done)
        if piece is done:
            return
        yield piece

"""Helpers for the cascade/server tests: real servers on loopback around the session SLM."""

from __future__ import annotations

import socket
import time

import grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.escalation.grpc_llm import GrpcLLM
from corea_engine.models import resolve_model
from corea_engine.runtime.torch_executor import TorchExecutor
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.worker_service import WorkerService

# Small bounds keep every request to a few dozen tokens (CI time).
SMALL = dict(max_reasoning_chars=80, max_answer_chars=16)


def stand_in_llm(slm: TorchExecutor) -> TorchExecutor:
    """A second executor over the SLM's weights: the stand-in LLM tier, no second load."""
    llm = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer), max_batch_size=16)
    llm.model_name = "stand-in-llm"
    return llm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_server(executor: TorchExecutor, port: int = 0) -> ServerThread:
    """`corea worker` in a thread: the executor served as sglang.grpc.scheduler.SglangScheduler.
    Its GetTokenizer sends the embedded model's tokenizer files."""
    model_path = resolve_model(None).path
    return ServerThread(lambda: build_server(worker=WorkerService(executor, model_path=model_path),
                                             port=port, host="127.0.0.1")).start()


llm_server = worker_server  # the LLM tier is a worker like any engine


def worker_running(server: ServerThread, settle_s: float = 0.0) -> int:
    """Requests running or waiting in the worker, from its GetLoads; waits up to settle_s for 0
    (an abort frees the batch slot at the engine's next step)."""
    deadline = time.monotonic() + settle_s
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SglangSchedulerStub(channel)
        while (total := stub.GetLoads(pb.GetLoadsRequest(), timeout=30).aggregate.total_reqs) and time.monotonic() < deadline:
            time.sleep(0.05)
    return total


def corea_server(slm, llm_address: str, *, max_inflight: int = 64, metrics_port=None, **config) -> ServerThread:
    cfg = CascadeConfig(**{**SMALL, **config})
    cascade = Cascade(slm, GrpcLLM(llm_address), cfg)
    return ServerThread(lambda: build_server(cascade, port=0, host="127.0.0.1", max_inflight=max_inflight),
                        metrics_port=metrics_port).start()


def serve_banner(proc) -> tuple[str, int, int]:
    """(the banner line, gRPC port, HTTP port) of a `corea serve --http-port 0` process, read from
    its stdout: the banner comes once the models are loaded and both ports are bound."""
    for line in proc.stdout:
        if line.startswith("corea serve:"):
            grpc_port = int(line.split(" on port ")[1].split()[0])
            http_port = int(line.split("OpenAI HTTP API on port ")[1].split(",")[0].split()[0])
            return line, grpc_port, http_port
    raise AssertionError(f"corea serve exited with {proc.wait()} before serving")

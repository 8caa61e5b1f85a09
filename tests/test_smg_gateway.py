"""SMG (the Shepherd Model Gateway, PyPI `smg`, installed by `make test`'s setup) in front of two
`corea worker` processes: OpenAI chat completions through it with the `openai` SDK, and one worker
stopped mid-run while every request is still answered.

Everything is real and on loopback: two worker processes, SMG's Rust router, the openai client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from openai import OpenAI
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.models import resolve_model

MODEL = "smollm2-135m"
READY = re.compile(r"on port (\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smg_binary() -> str:
    path = shutil.which("smg") or str(Path(sys.executable).with_name("smg"))
    if not os.access(path, os.X_OK):
        pytest.fail("the SMG gateway is not installed: run `make test` (its setup installs smg==1.13.0)")
    return path


def wait_for(what: str, check, proc: subprocess.Popen, log: Path, limit_s: float = 240.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} was not ready after {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL by pid (SMG's router may outlive a SIGTERM)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker(tmp: Path, name: str) -> tuple[subprocess.Popen, int]:
    log = tmp / f"{name}.log"
    env = {**os.environ, "COREA_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "corea_engine.cli", "worker", "--host", "127.0.0.1", "--port", "0",
                                 "--max-batch-size", "8"], stdout=out, stderr=subprocess.STDOUT, env=env)
    port = wait_for(f"corea worker {name}", lambda: (m := READY.search(log.read_text())) and int(m.group(1)), proc, log)
    return proc, port


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


def answers(client) -> bool:
    try:
        return bool(ask(client, "Hi", max_tokens=1).choices)
    except Exception:  # not ready yet (503 while the tokenizer registers)
        return False


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smg")
    binary = smg_binary()
    workers = [start_worker(tmp, f"worker{i}") for i in (1, 2)]
    port, log = free_port(), tmp / "smg.log"
    with open(log, "w") as out:
        router = subprocess.Popen(
            [binary, "launch", "--host", "127.0.0.1", "--port", str(port),
             "--worker-urls", *(f"grpc://127.0.0.1:{p}" for _, p in workers),
             "--model-path", str(resolve_model(MODEL).path), "--policy", "round_robin",
             "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=180)
        # Ready: both workers registered and the model's tokenizer loaded (a one-token answer comes back).
        wait_for("smg", lambda: len((http_json(f"{base}/workers") or {}).get("workers", [])) == 2
                 and answers(client), router, log)
        yield {"client": client, "workers": workers, "log": log}
    finally:
        stop(router)
        for proc, _ in workers:
            stop(proc)


def ask(client, content: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def test_models_are_listed(gateway):
    assert [m.id for m in gateway["client"].models.list().data] == [MODEL]


def test_chat_completion_streamed_and_not_agree(gateway):
    client = gateway["client"]
    whole = ask(client, "What is 2 + 3?", max_tokens=12)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens > 5
    stream = ask(client, "What is 2 + 3?", max_tokens=12, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == text  # greedy: the same tokens, sent as they came


def test_chat_completion_agrees_with_the_worker_called_directly(gateway):
    """SMG applies the chat template and detokenizes; the worker's own greedy tokens are the answer."""
    from transformers import AutoTokenizer

    whole = ask(gateway["client"], "Name a colour.", max_tokens=8)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL).path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    with grpc.insecure_channel(f"127.0.0.1:{gateway['workers'][0][1]}") as channel:
        direct = list(pb_grpc.SglangSchedulerStub(channel).Generate(pb.GenerateRequest(
            request_id="direct", tokenized=pb.TokenizedInput(input_ids=ids),
            sampling_params=pb.SamplingParams(max_new_tokens=8)), timeout=120))[-1].complete
    assert whole.usage.prompt_tokens == len(ids)
    assert whole.choices[0].message.content == tokenizer.decode(direct.output_ids, skip_special_tokens=True).strip()


def test_response_format_json_schema_is_enforced(gateway):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["apples", "pears"]}},
              "required": ["answer", "unit"], "additionalProperties": False}
    reply = ask(gateway["client"], "I have 2 apples and buy 3 more. How many apples? Reply in JSON.", max_tokens=40,
                response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}})
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"answer", "unit"} and isinstance(value["answer"], int) and value["unit"] in ("apples", "pears")


def test_the_cascade_defers_to_the_llm_tier_behind_smg(gateway, slm_executor, monkeypatch):
    """The cascade's OpenAI escalation client pointed at SMG: threshold 1 defers every question."""
    import asyncio

    from corea_engine.cascade import Cascade, CascadeConfig, SolveRequest
    from corea_engine.escalation.factory import make_client

    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    # Short bounded fields, no token cap: both tiers finish their contract (a cut one is degraded).
    config = CascadeConfig(llm_openai_base_url=str(gateway["client"].base_url), llm_model=MODEL, threshold=1.0,
                           max_reasoning_chars=40, max_answer_chars=16)
    async def solve():
        cascade = Cascade(slm_executor, make_client(config), config)
        try:
            return await cascade.solve(SolveRequest("What is 17 * 23?"))
        finally:
            await cascade.close()

    result = asyncio.run(solve())
    assert result.deferred and result.answered_by == "llm" and not result.degraded, result.degraded_reason
    assert result.answer and result.llm_completion_tokens > 0

def test_every_request_is_answered_when_a_worker_stops_mid_run(gateway):
    client, (_, (second, port)) = gateway["client"], gateway["workers"]
    questions = [f"What is {i} + 3?" for i in range(10)]
    with ThreadPoolExecutor(4) as pool, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        replies = [pool.submit(ask, client, q, max_tokens=10) for q in questions]
        loads = pb_grpc.SglangSchedulerStub(channel).GetLoads
        deadline = time.monotonic() + 120
        while not loads(pb.GetLoadsRequest(), timeout=10).loads[0].num_running_reqs and time.monotonic() < deadline:
            time.sleep(0.05)
        second.kill()  # mid-generation, no drain: its in-flight calls break
        answers = [r.result() for r in replies]
    assert second.poll() is not None
    assert all(a.choices[0].message.content for a in answers)
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)


"""Our own commands reach a secured server (issue #20, items 4 and 5).

One `corea serve` process with mTLS and bearer tokens, on 127.0.0.1 with /metrics: its socket
table shows every listener there and nowhere else; `corea solve`, `eval`, `bench` and `demo` reach it
with --address, --tls-ca, --tls-cert/--tls-key and --token-file, and get clear one-line errors
without the token or without TLS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_server_listeners import listening
from tls_certs import make_certs

BANNER = re.compile(r"on port (\d+) of 127\.0\.0\.1 .*metrics on 127\.0\.0\.1:(\d+)/metrics")


def corea(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corea_engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """(pid, grpc port, metrics port, client flags) of a running `corea serve` with mTLS and tokens."""
    folder = tmp_path_factory.mktemp("secured")
    certs = make_certs(folder / "certs")
    (folder / "tokens").write_text("ci:s3cret-token\n")
    (folder / "token").write_text("s3cret-token\n")
    log = folder / "serve.log"
    env = {**os.environ, "COREA_MAX_REASONING_CHARS": "60", "COREA_MAX_ANSWER_CHARS": "16"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corea_engine.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--mode", "slm_only", "--tls-cert", certs.server_cert, "--tls-key", certs.server_key,
             "--tls-client-ca", certs.ca, "--auth-tokens-file", str(folder / "tokens")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while (match := BANNER.search(log.read_text())) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        flags = ["--address", f"127.0.0.1:{match.group(1)}", "--tls-ca", certs.ca, "--tls-cert", certs.client_cert,
                 "--tls-key", certs.client_key, "--token-file", str(folder / "token")]
        yield proc.pid, int(match.group(1)), int(match.group(2)), flags
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_every_listener_of_corea_serve_is_on_its_host(secured):
    pid, port, metrics_port, _ = secured
    sockets = listening(pid=pid)
    assert {p for _, p in sockets} >= {port, metrics_port}, sockets
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "corea_inflight_requests" in text and 'corea_cache_entries{cache="grammar"}' in text


def test_solve_reaches_the_secured_server(secured):
    *_, flags = secured
    out = corea("solve", "What is 2 + 3?", *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["answer"] and result["mode"] == "slm_only"


@pytest.mark.parametrize("drop, expected", [
    ("--token-file", "UNAUTHENTICATED"),  # TLS, but no token
    ("--tls-cert", "UNAVAILABLE"),  # token, but no client certificate: the mTLS handshake fails
    ("--tls-ca", "UNAVAILABLE"),  # plaintext to a TLS port
])
def test_solve_without_a_credential_is_a_one_line_error(secured, drop, expected):
    *_, flags = secured
    kept, skip = [], set()
    for i, flag in enumerate(flags):
        if flag == drop or (drop == "--tls-cert" and flag == "--tls-key") or (drop == "--tls-ca" and flag.startswith("--tls")):
            skip |= {i, i + 1}
    kept = [f for i, f in enumerate(flags) if i not in skip]
    out = corea("solve", "What is 2 + 3?", *kept, "--timeout", "20")
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


def test_eval_bench_and_demo_reach_the_secured_server(secured, tmp_path):
    *_, flags = secured
    out = corea("eval", "--dataset", "gsm8k", "--limit", "2", "--mode", "slm_only", "--no-complete",
                "--out", str(tmp_path / "eval"), *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())
    out = corea("bench", "--target", "grpc", "--concurrency", "1", "--requests", "1", "--warmup", "0",
                "--mode", "slm_only", "--question-limit", "1", "--out", str(tmp_path / "bench"), *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(next((tmp_path / "bench").glob("*.json")).read_text())
    assert report[0]["levels"][0]["errors"] == 0 and report[0]["levels"][0]["ok"] == 1, report
    out = corea("demo", "-n", "2", *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GSM8K through the cascade over the server at" in out.stdout and "2 questions in" in out.stdout


def test_client_flags_without_an_address_are_refused():
    out = corea("solve", "hi", "--token-file", "/nonexistent")
    assert out.returncode == 2 and "give --address too" in out.stderr
    out = corea("bench", "--target", "grpc", "--spawn", "--tls-ca", str(Path(__file__)))
    assert out.returncode == 2 and "not with --spawn" in out.stderr


def test_the_async_client_speaks_mtls_with_a_token(secured):
    """AsyncCoreaClient (what eval and bench use) with every call kind; a wrong token is refused."""
    import asyncio

    import grpc

    from corea_engine.cascade import SolveRequest
    from corea_engine.client import AsyncCoreaClient
    from corea_engine.server.tls import ClientTLS

    *_, flags = secured
    opt = dict(zip(flags[::2], flags[1::2]))
    tls = ClientTLS(ca_file=opt["--tls-ca"], cert_file=opt["--tls-cert"], key_file=opt["--tls-key"])
    token = Path(opt["--token-file"]).read_text().strip()
    question = SolveRequest("What is 4 + 4?", mode="slm_only")

    async def main():
        async with AsyncCoreaClient(opt["--address"], tls=tls, token=token, timeout_s=300) as client:
            await client.wait_ready(30)
            one = await client.solve(question)
            kinds = [event.WhichOneof("event") async for event in client.stream(question)]
            batch = await client.solve_batch([question, SolveRequest("What is 5 + 5?", mode="slm_only")])
        async with AsyncCoreaClient(opt["--address"], tls=tls, token="wrong", timeout_s=30) as client:
            try:
                await client.solve(question)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
        return one, kinds, batch, code

    one, kinds, batch, code = asyncio.run(main())
    assert one.answer and one.mode == "slm_only"
    assert kinds[0] == "slm_token" and kinds[-1] == "result"
    assert len(batch) == 2 and all(r.answer for r in batch)
    assert code == grpc.StatusCode.UNAUTHENTICATED

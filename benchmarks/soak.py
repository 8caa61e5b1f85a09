"""Soak: many concurrent clients, mixed unary and streaming, for a while, with the LLM tier stopped
and restarted once in the middle. Nothing may be lost and nothing may pass its deadline.

    python benchmarks/soak.py                                   # 64 clients, 60 s, `corea serve` + `corea serve-llm`
    python benchmarks/soak.py --clients 8 --duration-s 15       # short
    python benchmarks/soak.py --out runs/soak                   # also writes soak.json and soak.md there

Each client has its own channel and sends one request after another until the duration is over,
alternating Solve and SolveStream; thresholds cycle 0.0 / 0.5 / 1.0 so both tiers are busy (1.0
always defers). At `--llm-down-at` (a fraction of the duration) the `corea serve-llm` process gets
SIGTERM (a short drain, then it exits); `--llm-down-s` later it starts again on the same port.
Deferred requests meanwhile are answered degraded by the SLM, with the reason.

Report: requests sent, final results received (equal: nothing lost), errors by status, requests
past their deadline, degraded answers and their reasons, answers per tier, latency, and the
resident memory (RSS) of the servers at start and end. tests/test_soak_short.py runs a short
soak on in-process servers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from corea_engine.cascade import SolveRequest
from corea_engine.client import CoreaClient
from corea_engine.server.convert import from_response

THRESHOLDS = (0.0, 0.5, 1.0)
READY = re.compile(r"on port (\d+)")


# ------------------------------------------------------------------------------------ results
@dataclass
class Outcome:
    started: float  # seconds since the soak began
    ended: float
    streaming: bool
    threshold: float
    code: str = "OK"
    details: str = ""
    answered_by: str = ""
    deferred: bool = False
    degraded: bool = False
    degraded_reason: str = ""


@dataclass
class SoakReport:
    clients: int
    duration_s: float
    deadline_s: float
    sent: int = 0
    results: int = 0
    lost: int = 0
    past_deadline: int = 0
    errors: dict = field(default_factory=dict)
    unary: int = 0
    streaming: int = 0
    answered_by: dict = field(default_factory=dict)
    deferred: int = 0
    degraded: int = 0
    degraded_reasons: dict = field(default_factory=dict)
    degraded_during_outage: int = 0  # degraded answers that arrived while the LLM was down
    degraded_after_outage: int = 0  # ... after it served again (calls cut at the stop, breaker cool-down)
    llm_down_at_s: float | None = None
    llm_up_again_at_s: float | None = None
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    latency_max_s: float = 0.0
    results_per_s: float = 0.0
    wall_s: float = 0.0
    rss_mb: dict = field(default_factory=dict)
    rss_timeline: list = field(default_factory=list)  # [seconds, {server: MB}] every few seconds

    def markdown(self) -> str:
        lines = [
            f"# Soak: {self.clients} clients, {self.duration_s:g} s, deadline {self.deadline_s:g} s",
            "",
            "| measure | value |", "|---|---|",
            f"| requests sent | {self.sent} ({self.unary} unary, {self.streaming} streaming) |",
            f"| final results received | {self.results} |",
            f"| lost (sent - results - errors) | {self.lost} |",
            f"| errors by status | {self.errors or 'none'} |",
            f"| past their deadline | {self.past_deadline} |",
            f"| answered by | {self.answered_by} |",
            f"| deferred | {self.deferred} |",
            f"| degraded | {self.degraded} ({self.degraded_during_outage} arrived while the LLM was down, "
            f"{self.degraded_after_outage} after it served again) |",
            f"| LLM down / up again at | {self.llm_down_at_s} s / {self.llm_up_again_at_s} s |",
            f"| latency p50 / p95 / max | {self.latency_p50_s:.2f} / {self.latency_p95_s:.2f} / {self.latency_max_s:.2f} s |",
            f"| results per second | {self.results_per_s:.2f} |",
            f"| wall time (incl. drain) | {self.wall_s:.1f} s |",
        ]
        for name, (start, end) in self.rss_mb.items():
            lines.append(f"| RSS {name} start / end | {start:.0f} / {end:.0f} MB |")
        if self.rss_timeline:
            names = list(self.rss_timeline[0][1])
            lines += ["", "RSS over time (MB): " + ", ".join(
                f"{t:.0f} s: " + "/".join(f"{snap.get(n, float('nan')):.0f}" for n in names) for t, snap in self.rss_timeline)
                + f"  ({' / '.join(names)})"]
        if self.degraded_reasons:
            lines += ["", "Degraded reasons (digits as #):", ""]
            lines += [f"- {count} x `{reason}`" for reason, count in sorted(self.degraded_reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def normalise_reason(reason: str) -> str:
    """Group reasons that differ only in numbers, ports and attempt counts."""
    return re.sub(r"\d+", "#", reason)[:160]


def summarise(outcomes: list[Outcome], sent: int, *, clients: int, duration_s: float, deadline_s: float,
              down: tuple[float | None, float | None], wall_s: float, rss_mb: dict) -> SoakReport:
    report = SoakReport(clients=clients, duration_s=duration_s, deadline_s=deadline_s, sent=sent, wall_s=wall_s,
                        rss_mb=rss_mb, llm_down_at_s=down[0], llm_up_again_at_s=down[1])
    ok = [o for o in outcomes if o.code == "OK"]
    report.results = len(ok)
    report.errors = dict(Counter(o.code for o in outcomes if o.code != "OK"))
    report.lost = sent - len(outcomes)  # a request that never came back at all
    latencies = sorted(o.ended - o.started for o in outcomes)
    report.past_deadline = sum(1 for o in outcomes if o.code == "DEADLINE_EXCEEDED" or o.ended - o.started > deadline_s)
    report.unary = sum(1 for o in outcomes if not o.streaming)
    report.streaming = len(outcomes) - report.unary
    report.answered_by = dict(Counter(o.answered_by for o in ok))
    report.deferred = sum(o.deferred for o in ok)
    report.degraded = sum(o.degraded for o in ok)
    report.degraded_reasons = dict(Counter(normalise_reason(o.degraded_reason) for o in ok if o.degraded))
    if down[0] is not None:
        up = down[1] if down[1] is not None else float("inf")
        report.degraded_during_outage = sum(1 for o in ok if o.degraded and down[0] <= o.ended <= up)
        report.degraded_after_outage = sum(1 for o in ok if o.degraded and o.ended > up)
    if latencies:
        report.latency_p50_s = statistics.median(latencies)
        report.latency_p95_s = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        report.latency_max_s = latencies[-1]
    report.results_per_s = report.results / wall_s if wall_s else 0.0
    return report


# ------------------------------------------------------------------------------------ clients
def run_clients(address: str, questions: list[str], *, clients: int, duration_s: float, deadline_s: float,
                max_new_tokens: int = 0, on_tick=None, tls=None, token: str | None = None):
    """Drive the Corea service through corea_engine.client (tls: a ClientTLS, token: a bearer token);
    returns (outcomes, sent). on_tick(elapsed) runs on the caller's thread."""
    t0 = time.monotonic()
    stop_at = t0 + duration_s
    outcomes: list[Outcome] = []
    sent = [0]
    lock = threading.Lock()

    def client(c: int):
        corea = CoreaClient(address, tls=tls, token=token, timeout_s=deadline_s)
        k = 0
        while time.monotonic() < stop_at:
            n = c + clients * k
            streaming = (c + k) % 2 == 1
            threshold = THRESHOLDS[n % len(THRESHOLDS)]
            request = SolveRequest(questions[n % len(questions)], request_id=f"soak-{c}-{k}",
                                   threshold=threshold, max_new_tokens=max_new_tokens or None)
            with lock:
                sent[0] += 1
            outcome = Outcome(time.monotonic() - t0, 0.0, streaming, threshold)
            try:
                if streaming:
                    results = [from_response(e.result) for e in corea.stream(request) if e.WhichOneof("event") == "result"]
                    if len(results) != 1:
                        outcome.code, outcome.details = "NO_RESULT", f"stream ended with {len(results)} results"
                        response = None
                    else:
                        response = results[0]
                else:
                    response = corea.solve(request)
                if response is not None:
                    outcome.answered_by = f"TIER_{(response.answered_by or 'unspecified').upper()}"  # corea.v1.Tier names
                    outcome.deferred, outcome.degraded = response.deferred, response.degraded
                    outcome.degraded_reason = response.degraded_reason
            except grpc.RpcError as err:
                outcome.code, outcome.details = err.code().name, err.details() or ""
            outcome.ended = time.monotonic() - t0
            with lock:
                outcomes.append(outcome)
            k += 1
        corea.close()

    threads = [threading.Thread(target=client, args=(c,), name=f"soak-client-{c}", daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick is not None:
            on_tick(time.monotonic() - t0)
        time.sleep(0.05)
    return outcomes, sent[0]


class OutageSchedule:
    """Calls stop() once at down_at_s and start() once down_s later (from the tick loop)."""

    def __init__(self, stop, start, down_at_s: float, down_s: float, log=print):
        self.stop, self.start, self.down_at_s, self.down_s, self.log = stop, start, down_at_s, down_s, log
        self.down_at: float | None = None
        self.up_at: float | None = None

    def __call__(self, elapsed: float) -> None:
        if self.down_at is None and elapsed >= self.down_at_s:
            self.log(f"[{elapsed:6.1f} s] stopping the LLM tier")
            self.down_at = elapsed
            self.stop()
        elif self.down_at is not None and self.up_at is None and elapsed >= self.down_at + self.down_s:
            self.log(f"[{elapsed:6.1f} s] starting the LLM tier again")
            started = time.monotonic()
            self.start()  # returns once it serves (a subprocess loads its model first)
            self.up_at = elapsed + (time.monotonic() - started)
            self.log(f"[{self.up_at:6.1f} s] the LLM tier serves again")

    @property
    def window(self) -> tuple[float | None, float | None]:
        return self.down_at, self.up_at


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------- subprocess servers
class Spawned:
    """A `corea` server subprocess that prints 'on port N' when ready."""

    def __init__(self, command: str, args: list[str], env: dict, log_dir: Path, timeout_s: float = 600):
        self.command, self.args, self.env, self.log_dir, self.timeout_s = command, args, env, log_dir, timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0

    def start(self, port: int | None = None) -> int:
        self.starts += 1
        log_path = self.log_dir / f"{self.command}-{self.starts}.log"
        args = [*self.args, "--port", str(port if port is not None else 0)]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "corea_engine.cli", self.command, *args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            match = READY.search(log_path.read_text())
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                raise RuntimeError(f"corea {self.command} exited with {self.proc.returncode}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"corea {self.command} not ready after {self.timeout_s} s")

    def stop(self, wait_s: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def spawned_rig(args, log):
    """`corea serve-llm` and `corea serve` (reaching it over gRPC) as subprocesses on loopback."""
    env = dict(os.environ, COREA_THREADS=str(args.threads))
    settings = dict(max_reasoning_chars=args.max_reasoning_chars, max_answer_chars=args.max_answer_chars,
                    llm_retries=1, retry_backoff_s=0.1, breaker_failures=3, breaker_cooldown_s=2.0, llm_timeout_s=60.0)
    with tempfile.TemporaryDirectory(prefix="corea-soak-") as tmp:
        tmp = Path(tmp)
        config = tmp / "cascade.json"
        config.write_text(json.dumps(settings))
        inflight = str(args.clients + 8)
        llm = Spawned("serve-llm", ["--host", "127.0.0.1", "--max-inflight", inflight, "--grace-s", str(args.llm_grace_s)],
                      env, tmp)
        corea = Spawned("serve", ["--host", "127.0.0.1", "--no-metrics", "--max-inflight", inflight, "--config", str(config)],
                        env, tmp)
        try:
            llm_port = llm.start()
            log(f"corea serve-llm on port {llm_port} (pid {llm.pid})")
            corea.args += ["--llm-address", f"127.0.0.1:{llm_port}"]
            corea_port = corea.start()
            log(f"corea serve on port {corea_port} (pid {corea.pid})")
            yield SimpleRig(f"127.0.0.1:{corea_port}", stop_llm=llm.stop, start_llm=lambda: llm.start(llm_port),
                            rss=lambda: {"corea serve": rss_mb(corea.pid),
                                         "corea serve-llm (end: the restarted process)": rss_mb(llm.pid)})
        finally:
            for server in (corea, llm):
                server.stop()
            for path in sorted(tmp.glob("*.log")):
                (Path(args.out) / path.name).write_text(path.read_text()) if args.out else None


@dataclass
class SimpleRig:
    address: str
    stop_llm: object
    start_llm: object
    rss: object  # () -> {name: MB}


def soak(rig: SimpleRig, questions: list[str], *, clients: int, duration_s: float, deadline_s: float,
         llm_down_at: float = 0.4, llm_down_s: float = 8.0, warmup: bool = True, max_new_tokens: int = 0,
         rss_every_s: float = 10.0, log=print) -> tuple[SoakReport, list[Outcome]]:
    if warmup:  # the first request pays one-time costs (grammar compile); RSS is taken after it
        with CoreaClient(rig.address) as corea:
            corea.solve(SolveRequest(questions[0], threshold=1.0), timeout_s=deadline_s)
    rss_start = rig.rss()
    schedule = OutageSchedule(rig.stop_llm, rig.start_llm, llm_down_at * duration_s, llm_down_s, log)
    timeline: list = []

    def tick(elapsed: float) -> None:
        schedule(elapsed)
        if not timeline or elapsed - timeline[-1][0] >= rss_every_s:
            try:
                timeline.append([round(elapsed, 1), rig.rss()])
            except OSError:  # the LLM process is between stop and start
                pass

    t0 = time.monotonic()
    outcomes, sent = run_clients(rig.address, questions, clients=clients, duration_s=duration_s,
                                 deadline_s=deadline_s, max_new_tokens=max_new_tokens, on_tick=tick)
    wall = time.monotonic() - t0
    if schedule.up_at is None and schedule.down_at is not None:  # the run ended before the restart was due
        rig.start_llm()
    rss_end = rig.rss()
    report = summarise(outcomes, sent, clients=clients, duration_s=duration_s, deadline_s=deadline_s,
                       down=schedule.window, wall_s=wall, rss_mb={k: (rss_start[k], rss_end[k]) for k in rss_start})
    report.rss_timeline = timeline
    return report, outcomes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration-s", type=float, default=60.0, help="how long clients keep sending")
    p.add_argument("--deadline-s", type=float, default=600.0, help="each request's gRPC deadline")
    p.add_argument("--llm-down-at", type=float, default=0.4, help="fraction of the duration when the LLM stops")
    p.add_argument("--llm-down-s", type=float, default=10.0, help="how long the LLM stays down")
    p.add_argument("--llm-grace-s", type=float, default=2.0, help="the LLM server's drain on SIGTERM")
    # Short answers (~30 tokens): on a CPU the soak is about the serving path, not the model's prose.
    p.add_argument("--max-reasoning-chars", type=int, default=24)
    p.add_argument("--max-answer-chars", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="COREA_THREADS of each server")
    p.add_argument("--questions", type=int, default=40, help="GSM8K test questions to cycle through")
    p.add_argument("--out", default=None, help="folder for soak.json, soak.md and the server logs")
    args = p.parse_args(argv)
    from corea_engine.evaluation.datasets import load_gsm8k

    questions = [e.question for e in load_gsm8k("test", limit=args.questions)]
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    with spawned_rig(args, log) as rig:
        report, outcomes = soak(rig, questions, clients=args.clients, duration_s=args.duration_s, deadline_s=args.deadline_s,
                      llm_down_at=args.llm_down_at, llm_down_s=args.llm_down_s, log=log)
    text = report.markdown()
    print(text)
    if args.out:
        (Path(args.out) / "soak.json").write_text(json.dumps(asdict(report), indent=2))
        (Path(args.out) / "soak_outcomes.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
        (Path(args.out) / "soak.md").write_text(text + "\n")
    healthy = report.lost == 0 and report.past_deadline == 0 and not report.errors and report.results == report.sent
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

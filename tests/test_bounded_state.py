"""State keyed by client input stays bounded, and its size is a metric (issue #20, item 2).

Executors compile a grammar per contract bound or per grammar a worker client sends, and cache the
KV of each distinct system prompt: many distinct values must leave both caches at their bound, with
corea_cache_entries on /metrics saying so.
"""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from cascade_servers import SMALL, stand_in_llm
from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.contract import FORMATS, GRAMMAR_CACHE_SIZE, GrammarCache
from corea_engine.models import resolve_model
from corea_engine.runtime.executor import Request, SamplingParams
from corea_engine.runtime.torch_executor import PREFIX_CACHE_SIZE
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.worker_service import WorkerService


def test_the_grammar_cache_keeps_its_bound_and_the_latest_grammars(slm_executor):
    cache, tokenizer = slm_executor.grammars, slm_executor.tokenizer
    assert cache.max_entries == GRAMMAR_CACHE_SIZE
    for chars in range(1, 2 * GRAMMAR_CACHE_SIZE + 1):
        fmt = FORMATS["tags"].bounded(max_answer_chars=chars, max_reasoning_chars=chars + 7)
        matcher = cache.matcher(fmt)  # compiled (or found) and usable
        for token in tokenizer.encode(fmt.render("ok", "7", 0.5), add_special_tokens=False):
            assert matcher.accept_token(token)
        assert len(cache) <= GRAMMAR_CACHE_SIZE
    assert len(cache) == GRAMMAR_CACHE_SIZE
    latest = FORMATS["tags"].bounded(max_answer_chars=2 * GRAMMAR_CACHE_SIZE, max_reasoning_chars=2 * GRAMMAR_CACHE_SIZE + 7)
    assert cache.compiled(latest) is cache.compiled(latest)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^corea_cache_entries\{cache="(\w+)"\} (\S+)$', text, re.M)}


def test_many_distinct_client_values_leave_the_worker_and_cascade_caches_at_their_bounds(slm_executor):
    """A worker client sends a new JSON schema each time (a new grammar to compile), a cascade client a
    new contract bound each time: both land in the same bounded LRU, and /metrics says so."""
    llm = stand_in_llm(slm_executor)  # shares the tokenizer, so the grammar cache too
    config = CascadeConfig(**SMALL, mode="slm_only")
    worker = WorkerService(llm, model_path=resolve_model(None).path)
    factory = lambda: build_server(Cascade(slm_executor, None, config), worker=worker, host="127.0.0.1")  # noqa: E731
    prompt = list(llm.tokenizer.encode("Say a word:"))
    n = GRAMMAR_CACHE_SIZE + 16
    try:
        with ServerThread(factory, metrics_port=0) as server, grpc.insecure_channel(server.address) as channel:
            generate = pb_grpc.SglangSchedulerStub(channel).Generate

            def attack(i: int):
                schema = json.dumps({"type": "string", "maxLength": 5 + i})
                sampling = pb.SamplingParams(max_new_tokens=1, json_schema=schema)
                out = list(generate(pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=prompt),
                                                       sampling_params=sampling), timeout=300))
                return out[-1].complete

            with ThreadPoolExecutor(8) as pool:
                completes = list(pool.map(attack, range(n)))
            assert all(len(c.output_ids) == 1 for c in completes)
            sizes = scrape(server.server.metrics_port)
            assert len(llm.grammars) == GRAMMAR_CACHE_SIZE  # full, and no fuller
            assert sizes["grammar"] == GrammarCache.total_entries()
            assert sizes["grammar"] <= GRAMMAR_CACHE_SIZE * len(GrammarCache._per_tokenizer)
            assert sizes["slm_prefix_kv"] <= PREFIX_CACHE_SIZE
    finally:
        llm.close()


def test_many_distinct_system_prompts_leave_the_prefix_cache_at_its_bound(slm_executor):
    """Each distinct system prompt is a shared prefix whose KV the executor caches: an LRU too."""
    llm = stand_in_llm(slm_executor)
    try:
        for i in range(PREFIX_CACHE_SIZE + 4):
            llm.generate(Request(messages=[{"role": "system", "content": f"You are assistant number {i}; answer briefly and politely."},
                                           {"role": "user", "content": "Hi"}],
                                 sampling=SamplingParams(max_new_tokens=1)))
            assert llm.prefix_cache_entries <= PREFIX_CACHE_SIZE
        assert llm.prefix_cache_entries == PREFIX_CACHE_SIZE
    finally:
        llm.close()

"""State keyed by client input stays bounded, and its size is a metric (issue #20, item 2).

The LLM tier compiles a grammar per (contract, max_reasoning_chars, max_answer_chars) and caches
the KV of each distinct system prompt: many distinct values must leave both caches at their bound,
with corea_cache_entries on /metrics saying so.
"""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc

from cascade_servers import SMALL, stand_in_llm
from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.contract import FORMATS, GRAMMAR_CACHE_SIZE, GrammarCache
from corea_engine.protos import llm_pb2, llm_pb2_grpc
from corea_engine.runtime.torch_executor import PREFIX_CACHE_SIZE
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread


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


def test_many_distinct_client_values_leave_the_llm_tiers_caches_at_their_bounds(slm_executor):
    llm = stand_in_llm(slm_executor)  # shares the tokenizer, so the grammar cache too
    config = CascadeConfig(**SMALL, mode="slm_only")
    factory = lambda: build_server(Cascade(slm_executor, None, config), llm_executor=llm, host="127.0.0.1")  # noqa: E731
    n = GRAMMAR_CACHE_SIZE + 16
    try:
        with ServerThread(factory, metrics_port=0) as server, grpc.insecure_channel(server.address) as channel:
            generate = llm_pb2_grpc.LLMStub(channel).Generate

            def attack(i: int):
                # A distinct system prompt and distinct bounds each time: a new prefix and a new grammar.
                messages = [llm_pb2.ChatMessage(role="system", content=f"You are assistant number {i}."),
                            llm_pb2.ChatMessage(role="user", content="Hi")]
                return generate(llm_pb2.GenerateRequest(
                    messages=messages, contract="json", max_new_tokens=1, max_answer_chars=5 + i,
                    max_reasoning_chars=900 + 3 * i), timeout=300)

            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(attack, range(n)))
            assert all(r.completion_tokens == 1 for r in responses)
            sizes = scrape(server.server.metrics_port)
            assert len(llm.grammars) == GRAMMAR_CACHE_SIZE  # full, and no fuller
            assert sizes["grammar"] == GrammarCache.total_entries()
            assert sizes["grammar"] <= GRAMMAR_CACHE_SIZE * len(GrammarCache._per_tokenizer)
            assert sizes["llm_prefix_kv"] == llm.prefix_cache_entries == PREFIX_CACHE_SIZE
            assert sizes["slm_prefix_kv"] <= PREFIX_CACHE_SIZE
    finally:
        llm.close()

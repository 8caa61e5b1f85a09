"""The embedded runtime on the real SmolLM2: constrained formats, batching invariance, early stop,
confidence read from the logits, aborts and bad input."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from corea_engine.cascade import check_contract
from corea_engine.contract import FORMATS, build_messages
from corea_engine.runtime.probe import ConfidenceProbe
from corea_engine.runtime import (
    ConfidenceEvent,
    FinishedEvent,
    InvalidRequestError,
    Request,
    SamplingParams,
    TokenEvent,
)
from corea_kernels import confidence_stats_reference

# Small bounds keep CI time down; the grammar still guarantees a complete output in budget.
BOUNDED = {name: fmt.bounded(max_reasoning_chars=64, max_answer_chars=16) for name, fmt in FORMATS.items()}
# A batched run may take another token than a solo run only where the two were this close.
LOGIT_TOLERANCE = 0.05


def request(question, fmt, **sampling):
    return Request(messages=build_messages(question, fmt), contract=fmt, sampling=SamplingParams(**sampling))


def solo_logits(executor, prompt_ids, prefix, fmt=None):
    """Raw next-token logits after prompt+prefix, from one unbatched forward pass, plus the
    grammar bitmask at that point (None without a contract)."""
    import xgrammar as xgr

    ids = torch.tensor([prompt_ids + prefix])
    with torch.no_grad():
        logits = executor.model(input_ids=ids).logits[:, -1, :].float()
    bitmask = None
    if fmt is not None:
        matcher = executor.grammars.matcher(fmt)
        for token in prefix:
            assert matcher.accept_token(token)
        bitmask = xgr.allocate_token_bitmask(1, executor.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
    return logits, bitmask


def prompt_ids_of(executor, req):
    return executor._encode(req)


def assert_same_or_near_tie(executor, req, solo, batched) -> bool:
    """True when the batched tokens equal the solo ones; otherwise the first divergence must be a
    near-tie (logits within LOGIT_TOLERANCE in an unbatched forward of that step)."""
    if solo.token_ids == batched.token_ids:
        return True
    a, b = solo.token_ids + [-1], batched.token_ids + [-1]
    t = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    logits, _ = solo_logits(executor, prompt_ids_of(executor, req), solo.token_ids[:t], req.format)
    gap = abs(float(logits[0, a[t]] - logits[0, b[t]])) if -1 not in (a[t], b[t]) else float("inf")
    assert gap <= LOGIT_TOLERANCE, f"diverged at step {t} with logit gap {gap:.4f} ({a[t]} vs {b[t]})"
    return False


@pytest.mark.parametrize("decoding", ["greedy", "sampled"])
def test_every_format_parses_on_twenty_gsm8k_questions(slm_executor, gsm8k_questions, decoding):
    sampling = {"temperature": 0.0} if decoding == "greedy" else {"temperature": 0.8, "top_p": 0.95, "seed": 7}
    streams = {}
    for name, fmt in BOUNDED.items():
        for i, q in enumerate(gsm8k_questions[:20]):
            streams[(name, i)] = slm_executor.submit(request(q, fmt, **sampling))
    failures = []
    for key, stream in streams.items():
        result = stream.wait(timeout=900)
        parsed, problem = check_contract(BOUNDED[key[0]], result.text, result.finish_reason, result.error)
        if parsed is None or result.confidence is None:
            failures.append((key, result.finish_reason, problem, result.text[-80:]))
        else:
            assert parsed.confidence == pytest.approx(result.confidence.sampled)
    assert not failures, failures


def test_concurrent_requests_match_solo_runs_under_greedy(slm_executor, gsm8k_questions):
    """Requests that join a running batch at different times produce the solo tokens, except
    where a near-tie at the divergence step lets floating-point order pick the other token."""
    cases = [(gsm8k_questions[20 + i], list(BOUNDED.values())[i % 4]) for i in range(8)]
    solo = [slm_executor.generate(request(q, fmt)) for q, fmt in cases]
    streams = []
    for q, fmt in cases:  # staggered: each joins a batch already several steps in
        streams.append(slm_executor.submit(request(q, fmt)))
        time.sleep(0.25)
    batched = [s.wait(timeout=600) for s in streams]
    identical = sum(
        assert_same_or_near_tie(slm_executor, request(q, fmt), a, b) for (q, fmt), a, b in zip(cases, solo, batched)
    )
    print(f"\n{identical}/{len(cases)} concurrent requests identical to their solo runs")
    assert identical >= 1


@pytest.mark.parametrize("contract", ["json", None])
def test_the_shared_prompt_prefix_is_prefilled_once_and_changes_no_token(slm_executor, gsm8k_questions, contract):
    """The shared-prefix KV cache: a second request of a contract (the contract's system prompt),
    or of free text (the template's default system prompt), prefills only the prompt from its
    question on and decodes what a run without the cache decodes."""
    from corea_engine.runtime.torch_executor import TorchExecutor

    fmt = BOUNDED[contract] if contract else None
    first, second = (request(q, fmt, max_new_tokens=24) for q in gsm8k_questions[32:34])
    ids = slm_executor._encode(second)
    question = slm_executor.tokenizer.encode(gsm8k_questions[33], add_special_tokens=False)
    shared = next(i for i in range(len(ids)) if ids[i:i + len(question)] == question)  # where the question starts
    system = len(slm_executor.tokenizer.apply_chat_template(
        second.messages[:-1] or [{"role": "system", "content": ""}], tokenize=True, return_dict=False))
    assert shared > system > 0  # the system prompt and the user turn's header are shared
    slm_executor.generate(first)  # the shared part is cached from here on
    before = (slm_executor.stats.prefill_tokens, slm_executor.stats.prefix_hits)
    cached = slm_executor.generate(second)
    assert (slm_executor.stats.prefill_tokens - before[0], slm_executor.stats.prefix_hits - before[1]) == \
        (cached.prompt_tokens - shared, 1)
    plain = TorchExecutor(model_and_tokenizer=(slm_executor.model, slm_executor.tokenizer), prefix_cache=False)
    try:
        whole = plain.generate(request(gsm8k_questions[33], fmt, max_new_tokens=24))
        assert (plain.stats.prefill_tokens, plain.stats.prefix_hits) == (whole.prompt_tokens, 0)
    finally:
        plain.close()
    assert_same_or_near_tie(slm_executor, second, whole, cached)


def test_a_shared_prefix_shorter_than_the_minimum_is_not_cached(slm_executor):
    from corea_engine.runtime.torch_executor import SHARED_PREFIX_MIN_TOKENS

    alone = Request(messages=[{"role": "system", "content": "Answer in one word: what is 2 + 3?"}])
    ids = slm_executor._encode(alone)
    head = slm_executor._encode(Request(messages=[{"role": "system", "content": ""}]))
    assert 0 < next(i for i, (a, b) in enumerate(zip(head, ids)) if a != b) < SHARED_PREFIX_MIN_TOKENS
    assert slm_executor._shared_prefix_len(alone, ids) == 0  # the template's header alone: not shared
    asked = request("What is 2 + 3?", None)
    assert slm_executor._shared_prefix_len(asked, slm_executor._encode(asked)) >= SHARED_PREFIX_MIN_TOKENS


def test_abort_frees_the_slot_without_disturbing_others(slm_executor, gsm8k_questions):
    fmt = BOUNDED["tags"]
    keep = [request(q, fmt) for q in gsm8k_questions[28:31]]
    solo = [slm_executor.generate(r) for r in [request(q, fmt) for q in gsm8k_questions[28:31]]]
    victim = request(gsm8k_questions[31], fmt, max_new_tokens=400)
    victim.contract = None  # free text: it would run long
    victim.messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    streams = [slm_executor.submit(r) for r in keep]
    victim_stream = slm_executor.submit(victim)
    seen = 0
    for event in victim_stream:
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 5:
                assert slm_executor.abort(victim.request_id)
        if isinstance(event, FinishedEvent):
            aborted = event.result
    assert aborted.finish_reason == "abort" and aborted.completion_tokens < 400
    for req, a, s in zip(keep, solo, streams):
        b = s.wait(timeout=300)
        assert b.finish_reason in ("confidence", "stop")
        assert check_contract(fmt, b.text, b.finish_reason)[0] is not None
        assert_same_or_near_tie(slm_executor, req, a, b)
    deadline = time.time() + 30
    while slm_executor.running and time.time() < deadline:
        time.sleep(0.05)
    assert slm_executor.running == 0
    assert not slm_executor.abort(victim.request_id)


@pytest.mark.parametrize("name", ["json", "tags"])
def test_answer_first_stops_on_the_confidence_step(slm_executor, gsm8k_questions, name):
    fmt = BOUNDED[name]
    early = slm_executor.generate(request(gsm8k_questions[32], fmt))
    full_req = request(gsm8k_questions[32], fmt)
    full_req.stop_at_confidence = False
    full = slm_executor.generate(full_req)
    assert early.finish_reason == "confidence"
    assert early.completion_tokens == early.confidence.position + 1
    assert early.text == full.text and early.text.endswith(fmt.confidence_suffix)
    # The full run also decoded the forced closing text and the end-of-sequence step.
    assert full.finish_reason == "stop"
    assert full.completion_tokens > early.completion_tokens
    print(f"\n{name}: early stop after {early.completion_tokens} tokens, full run {full.completion_tokens} + EOS step")


@pytest.mark.parametrize("name", ["json_confidence_first", "tags_confidence_first"])
def test_confidence_first_reports_confidence_after_a_handful_of_tokens(slm_executor, gsm8k_questions, name):
    req = request(gsm8k_questions[33], BOUNDED[name])
    stream = slm_executor.submit(req)
    tokens = 0
    for event in stream:
        if isinstance(event, TokenEvent):
            tokens += 1
        elif isinstance(event, ConfidenceEvent):
            assert event.reading.position == tokens - 1 <= 8
            slm_executor.abort(req.request_id)
        elif isinstance(event, FinishedEvent):
            result = event.result
    assert result.finish_reason == "abort"
    assert result.confidence is not None and result.completion_tokens <= 10


def test_reported_confidence_equals_reference_from_raw_logits(slm_executor, gsm8k_questions):
    """The reading is the kernel reference evaluated on the raw logits of the confidence step."""
    for i, fmt in enumerate([BOUNDED["json"], BOUNDED["tags_confidence_first"]]):
        req = request(gsm8k_questions[34 + i], fmt)
        result = slm_executor.generate(req)
        reading = result.confidence
        logits, bitmask = solo_logits(
            slm_executor, prompt_ids_of(slm_executor, req), result.token_ids[: reading.position], fmt
        )
        probe = ConfidenceProbe.for_format(fmt, slm_executor.tokenizer)
        token_ids, values = torch.tensor(probe.token_ids), torch.tensor(probe.values)
        ref = confidence_stats_reference(logits, token_ids, values, bitmask)
        assert reading.expected == pytest.approx(float(ref.expected[0]), abs=2e-4)
        assert reading.mass == pytest.approx(1.0, abs=1e-5)  # the grammar allows only the scale there
        assert reading.entropy == pytest.approx(float(ref.entropy[0]), abs=2e-4)
        sampled_symbol = slm_executor.tokenizer.decode([result.token_ids[reading.position]])
        assert reading.sampled == pytest.approx(int(sampled_symbol) / 10)


def test_sampling_is_reproducible_with_a_seed(slm_executor, gsm8k_questions):
    fmt = BOUNDED["json"]
    a = slm_executor.generate(request(gsm8k_questions[36], fmt, temperature=1.0, seed=123))
    b = slm_executor.generate(request(gsm8k_questions[36], fmt, temperature=1.0, seed=123))
    c = slm_executor.generate(request(gsm8k_questions[36], fmt, temperature=1.0, seed=124))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Request(messages=[{"role": "user", "content": "  "}]), "question is empty"),
        (lambda: Request(messages=build_messages("x" * 20000)), "limit is"),
        (lambda: Request(messages=build_messages("\U0001d7d8" * 1500)), "tokens; the limit is"),
        (lambda: Request(messages=build_messages("hi"), contract="xml"), "unknown contract 'xml'"),
        (lambda: Request(messages=build_messages("hi"), sampling=SamplingParams(max_new_tokens=0)), "max_new_tokens"),
        (lambda: Request(messages=build_messages("hi"), sampling=SamplingParams(top_p=0.0)), "top_p"),
        (lambda: Request(messages=build_messages("hi"), sampling=SamplingParams(temperature=float("nan"))), "temperature"),
        (lambda: Request(), "exactly one of messages, prompt or input_ids"),
    ],
)
def test_bad_requests_are_refused_and_the_batch_goes_on(slm_executor, gsm8k_questions, make, message):
    running = slm_executor.submit(request(gsm8k_questions[37], BOUNDED["tags"]))
    with pytest.raises(InvalidRequestError, match=message):
        slm_executor.submit(make())
    done = running.wait(timeout=300)
    assert check_contract(BOUNDED["tags"], done.text, done.finish_reason)[0] is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["solve", ""], "question is empty"),
        (["solve", "hi", "--contract", "xml"], "unknown contract"),
        (["solve", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["solve", "hi", "--model", "/nonexistent/model"], "not found"),
        # Which setting named the missing model, not only its value:
        (["solve", "hi", "--llm-model", "/nonexistent/model"], "--llm-model: model '/nonexistent/model' not found"),
        (["solve", "hi", "--tier", "name=a", "--tier", "name=b,model=/nonexistent/model"],
         "tier 1 (b) model: model '/nonexistent/model' not found"),
    ],
)
def test_cli_reports_bad_input_with_exit_code_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "corea_engine.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one line, no traceback


LONG_TEXT = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep. " * 80


def wait_for(condition, limit_s=300.0):
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return condition()


@pytest.mark.parametrize("words, one_pass", [(900, True), (1400, True), (900, False)])
def test_abort_during_prefill_stops_the_prompt_within_a_chunk(slm_executor, gsm8k_questions, words, one_pass,
                                                              monkeypatch):
    """An abort that lands while a long prompt is being prefilled is not lost: it is refused no
    more, the prompt stops after the chunk in flight, and a prompt prefilled beside it goes on."""
    from corea_engine.runtime import torch_executor

    # Prompts of unlike lengths are prefilled in separate passes (one_pass=False: the real pass
    # cost); a pass that costs this much keeps the two in one, so the aborted row leaves a pass
    # the other row goes on in.
    if one_pass:
        monkeypatch.setattr(torch_executor, "PREFILL_PASS_COST_TOKENS", 1 << 20)

    text = " ".join(LONG_TEXT.split()[:words])
    victim = Request(messages=[{"role": "user", "content": text}], sampling=SamplingParams(max_new_tokens=50))
    total_chunks = -(-len(slm_executor._encode(victim)) // torch_executor.PREFILL_CHUNK_TOKENS)
    assert total_chunks >= 8
    # Prefilled beside it (no shared system prompt; in the same passes or just before): it must lose nothing.
    other = Request(messages=[{"role": "user", "content": gsm8k_questions[32] + " " + text[: len(text) // 2]}],
                    sampling=SamplingParams(max_new_tokens=6))
    lengths = [len(slm_executor._encode(r)) for r in (victim, other)]
    assert len(torch_executor.length_buckets(lengths, torch_executor.PREFILL_PASS_COST_TOKENS)) == (1 if one_pass else 2)
    solo = slm_executor.generate(other)
    before = slm_executor.stats.prefill_chunks
    with slm_executor._lock:  # re-entrant: both join the batch in one prefill
        stream, other_stream = slm_executor.submit(victim), slm_executor.submit(other)
    assert wait_for(lambda: slm_executor.stats.prefill_chunks > before)  # the long prefill is under way
    assert slm_executor.abort(victim.request_id)
    result = stream.wait(timeout=300)
    assert result.finish_reason == "abort" and result.completion_tokens == 0
    assert slm_executor.stats.prefill_chunks - before < total_chunks
    assert_same_or_near_tie(slm_executor, other, solo, other_stream.wait(timeout=300))
    assert not slm_executor.abort(victim.request_id)


SCRIPT_QUESTIONS = [
    "सीता के पास 5 आम हैं। उसने 3 खा लिए। कितने बचे? हिंदी में उत्तर दें।",
    "小明有3个苹果，又买了2个。他现在有几个苹果？请用中文回答。",
    "Reply with emoji only: 🍎🍎🍎 + 🍎🍎 = ? Write your reasoning using only emoji like 🍎🍏🍐🍊.",
]


def test_contract_output_in_any_script_ends_within_the_budget(slm_executor):
    """Reasoning in Devanagari, CJK and emoji on the real model, greedy and sampled: every run
    ends by the grammar within fmt.max_tokens (never 'length'), even where characters cost
    more than one token each."""
    fmt = FORMATS["json"].bounded(max_reasoning_chars=60, max_answer_chars=16)
    requests = [request(q, fmt, temperature=t, seed=seed) for q in SCRIPT_QUESTIONS for t, seed in ((0.0, None), (1.0, 1), (1.0, 2))]
    results = [s.wait(timeout=600) for s in [slm_executor.submit(r) for r in requests]]
    parsed = [check_contract(fmt, r.text, r.finish_reason)[0] for r in results]
    for r, p in zip(results, parsed):
        assert r.finish_reason == "confidence" and p is not None, r.text
        assert r.completion_tokens <= fmt.max_tokens
    tok = slm_executor.tokenizer
    ratios = [len(tok.encode(p.reasoning, add_special_tokens=False)) / max(len(p.reasoning), 1) for p in parsed]
    assert max(ratios) > 1.0, ratios  # some reasoning cost more than a token a character


def test_prefill_groups_minimise_padded_columns_plus_passes():
    """Joiners are split into prefill passes by prompt length: each index once, each group a run
    of neighbours by length, and no split of the sorted lengths costs less (brute force)."""
    import itertools
    import random

    from corea_engine.runtime.torch_executor import length_buckets

    def cost(lengths, groups, pass_cost):
        return sum(len(g) * max(lengths[i] for i in g) + pass_cost for g in groups)

    assert length_buckets([], 32) == []
    assert length_buckets([90, 90, 90], 32) == [[0, 1, 2]]  # nothing to pad: one pass
    assert length_buckets([60, 500, 58], 32) == [[2, 0], [1]]  # the long prompt pads nobody
    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 8))]
        pass_cost = rng.choice([0, 32, 1000])
        groups = length_buckets(lengths, pass_cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(lengths)
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        best = min(cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], pass_cost)
                   for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
        assert cost(lengths, groups, pass_cost) == best


def test_joiners_of_unlike_lengths_prefill_in_separate_passes(slm_executor, gsm8k_questions):
    """Two short prompts and a long one joining together: two prefill passes (the short ones are
    not padded to the long one), and every request decodes its solo tokens."""
    def ask(text):
        return Request(messages=[{"role": "user", "content": text}], sampling=SamplingParams(max_new_tokens=6))

    long_question = max(gsm8k_questions, key=len)
    texts = ["What is 2 + 3?", "What is 4 + 5?", long_question]
    assert len(slm_executor._encode(ask(long_question))) - len(slm_executor._encode(ask(texts[0]))) > 64
    solo = [slm_executor.generate(ask(t)) for t in texts]
    before = slm_executor.stats.prefills, slm_executor.stats.prefill_padding
    with slm_executor._lock:  # re-entrant: all three join in one admission
        streams = [slm_executor.submit(ask(t)) for t in texts]
    batched = [s.wait(timeout=300) for s in streams]
    short = [len(slm_executor._encode(ask(t))) for t in texts[:2]]
    assert slm_executor.stats.prefills - before[0] == 2
    assert slm_executor.stats.prefill_padding - before[1] == max(short) - min(short)  # the long one pads nobody
    for text, a, b in zip(texts, solo, batched):
        assert_same_or_near_tie(slm_executor, ask(text), a, b)


def test_a_shared_prefix_is_looked_up_once_for_all_its_length_buckets(slm_executor, gsm8k_questions):
    """Joiners of one contract and unlike lengths: two prefill passes, one prefix hit."""
    fmt = BOUNDED["json"]
    questions = ["What is 2 + 3?", max(gsm8k_questions, key=len)]
    slm_executor.generate(request(questions[0], fmt, max_new_tokens=1))  # the system prompt is cached
    before = slm_executor.stats.prefills, slm_executor.stats.prefix_hits
    with slm_executor._lock:  # re-entrant: both join in one admission
        streams = [slm_executor.submit(request(q, fmt, max_new_tokens=2)) for q in questions]
    assert all(s.wait(timeout=300).completion_tokens for s in streams)
    assert (slm_executor.stats.prefills - before[0], slm_executor.stats.prefix_hits - before[1]) == (2, 1)

"""Our contract grammars compile in SGLang's xgrammar backend and mask exactly what our runtime masks."""

from __future__ import annotations

import pytest

from sglang_helpers import FORMATS_UNDER_TEST, grammar_bitmasks, real_runs

from corea_engine.contract import FORMATS


def sglang_backend(executor):
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammarBackend

    eos = [executor.tokenizer.eos_token_id]
    return XGrammarGrammarBackend(executor.tokenizer, vocab_size=executor.vocab_size, model_eos_token_ids=eos)


@pytest.mark.parametrize("name", list(FORMATS_UNDER_TEST))
def test_sglang_masks_match_ours_along_a_real_output(slm_executor, name):
    fmt = FORMATS_UNDER_TEST[name]
    result = real_runs(slm_executor)[name]
    assert result.finish_reason in ("confidence", "stop"), result
    tokens = result.token_ids
    grammar = sglang_backend(slm_executor).dispatch_ebnf(fmt.ebnf())
    assert type(grammar).__name__ == "XGrammarGrammar", grammar  # not InvalidGrammarObject
    theirs = grammar.allocate_vocab_mask(vocab_size=slm_executor.vocab_size, batch_size=len(tokens) + 1, device="cpu")
    for i, token in enumerate(tokens):
        grammar.fill_vocab_mask(theirs, i)
        grammar.accept_token(token)  # raises ValueError if SGLang's grammar refuses the token
    grammar.fill_vocab_mask(theirs, len(tokens))
    ours = grammar_bitmasks(slm_executor, fmt, tokens)
    differing = (theirs != ours).any(dim=1).nonzero().flatten().tolist()
    assert differing == [], f"masks differ at output positions {differing[:10]} of {len(tokens) + 1}"
    # Not vacuous: at the confidence position both allow exactly the scale's symbols.
    from corea_kernels import unpack_bitmask

    position = result.confidence.position
    allowed = unpack_bitmask(ours[position : position + 1], slm_executor.vocab_size)[0]
    assert allowed.nonzero().flatten().tolist() == sorted(fmt.scale.token_ids(slm_executor.tokenizer))


@pytest.mark.parametrize("name", list(FORMATS))
def test_full_size_grammars_compile_in_sglang(slm_executor, name):
    grammar = sglang_backend(slm_executor).dispatch_ebnf(FORMATS[name].ebnf())
    assert type(grammar).__name__ == "XGrammarGrammar", grammar


def test_sglang_backend_reports_a_broken_grammar(slm_executor):
    grammar = sglang_backend(slm_executor).dispatch_ebnf('root ::= "a" (')
    assert type(grammar).__name__ == "InvalidGrammarObject"

"""Shared inputs for the microbenchmarks: the embedded model's tokenizer and realistic shapes."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("COREA_THREADS", "1")))

VOCAB = 49152  # SmolLM2's vocabulary: the width every per-step tensor has
BATCHES = (1, 16)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from corea_engine.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model().path)


@pytest.fixture(scope="session")
def grammars(tokenizer):
    from corea_engine.contract import GrammarCache

    return GrammarCache.for_tokenizer(tokenizer, VOCAB)


@pytest.fixture(scope="session")
def question():
    from corea_engine.evaluation.datasets import load_gsm8k

    return load_gsm8k("test", limit=1)[0].question

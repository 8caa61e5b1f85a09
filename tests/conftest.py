"""Shared fixtures: one real SmolLM2 executor per test session (loading it costs seconds)."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: one intra-op thread per engine keeps concurrent engines (SLM + stand-in LLM)
# from oversubscribing the machine.
torch.set_num_threads(int(os.environ.get("COREA_THREADS", "2")))


@pytest.fixture(scope="session")
def slm_executor():
    from corea_engine.runtime.torch_executor import TorchExecutor

    executor = TorchExecutor(max_batch_size=16)
    yield executor
    executor.close()


@pytest.fixture(scope="session")
def gsm8k_questions():
    from corea_engine.evaluation.datasets import load_gsm8k

    return [e.question for e in load_gsm8k("test", limit=40)]

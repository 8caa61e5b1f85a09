"""GRPO on CPU with the real SmolLM2: two steps change the weights, the export serves unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from corea_engine.cli import main
from corea_engine.training.grpo import (
    TrainSettings,
    build_prompt,
    freeze_below,
    load_trainable,
    make_trainer,
    save_for_runtime,
)
from corea_engine.training.tasks import Problem


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two GRPO steps on one-digit sums; returns (weights before, trainer, log path, export folder)."""
    out = tmp_path_factory.mktemp("grpo")
    model, tokenizer, _ = load_trainable(None)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    # Easy questions and room for a whole reply, so that some of the 8 samples per step parse
    # and the group's rewards differ: with equal rewards GRPO's advantages (and gradients) are 0.
    problems = [Problem(f"t{i}", f"What is {a} + {b}?", a + b, "+", 1) for i, (a, b) in enumerate([(2, 3), (4, 4), (1, 6), (3, 5)])]
    settings = TrainSettings(output_dir=str(out), steps=2, prompts_per_step=2, num_generations=4,
                             max_completion_length=40, temperature=1.0, learning_rate=1e-5, seed=3, progress=False,
                             save_every=2)
    trainer = make_trainer(settings, model, tokenizer, problems=problems)
    trainer.train()
    folder = save_for_runtime(trainer.model, tokenizer, out / "model")
    return before, trainer, settings.log_path, folder


def test_prompt_is_the_chat_template_plus_the_reply_opening():
    _, tokenizer, _ = load_trainable(None)
    prompt = build_prompt(tokenizer, "What is 2 + 3?", "json")
    assert prompt.endswith('<|im_start|>assistant\n{"reasoning": "')
    assert "What is 2 + 3?" in prompt and "Reply in exactly this form" in prompt


def test_two_steps_change_the_weights(trained):
    before, trainer, log_path, _ = trained
    rows = [json.loads(line) for line in open(log_path)]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/format/mean", "rewards/correctness/mean", "rewards/calibration/mean", "accuracy", "format_rate"):
        assert all(key in r for r in rows), key
    assert any(r["reward_std"] > 0 for r in rows), "no reward variance: GRPO had nothing to learn from"
    # The defaults train the top 8 blocks and the final norm: exactly those change.
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])}
    trainable = {k for k, v in trainer.model.named_parameters() if v.requires_grad}
    n = len(trainer.model.model.layers)
    assert trainable == {k for k in before if k.startswith("model.norm.")
                         or any(k.startswith(f"model.layers.{i}.") for i in range(n - 8, n))}
    assert changed == trainable


def test_checkpoints_are_exported_every_n_steps(trained):
    _, trainer, log_path, folder = trained
    checkpoints = sorted(p.name for p in (log_path.parent / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]  # save_every=2 over two steps
    assert (log_path.parent / "checkpoints" / "step-2" / "model.safetensors").is_file()


def test_freeze_below_leaves_only_the_top_blocks_trainable():
    model, _, _ = load_trainable(None)
    total = sum(p.numel() for p in model.parameters())
    assert freeze_below(model, None) == total
    top = model.model.layers[-2:]
    expected = sum(p.numel() for p in top.parameters()) + sum(p.numel() for p in model.model.norm.parameters())
    assert freeze_below(model, 2) == expected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    n = len(model.model.layers)
    assert all(name.startswith((f"model.layers.{n - 2}.", f"model.layers.{n - 1}.", "model.norm.")) for name in trainable)
    assert not model.model.embed_tokens.weight.requires_grad
    for bad in (0, n + 1):
        with pytest.raises(ValueError, match="train_layers must be"):
            freeze_below(model, bad)


def test_export_serves_in_the_runtime(trained):
    from corea_engine.contract import build_messages, get_format
    from corea_engine.runtime.executor import Request
    from corea_engine.runtime.torch_executor import TorchExecutor

    _, trainer, _, folder = trained
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    fmt = get_format("json").bounded(max_reasoning_chars=60)
    with TorchExecutor(str(folder), threads=1) as executor:
        result = executor.generate(Request(messages=build_messages("What is 2 + 3?", fmt), contract=fmt))
        reloaded = executor.model.model.layers[-1].mlp.down_proj.weight
        assert torch.equal(reloaded, trainer.model.model.layers[-1].mlp.down_proj.weight.detach())
    from corea_engine.cascade import check_contract

    assert result.finish_reason == "confidence" and check_contract(fmt, result.text, result.finish_reason)[0] is not None
    assert 0.0 <= result.confidence.expected <= 0.9


def test_corea_solve_serves_the_export(trained, capsys):
    """The cascade's SLM tier loads the export as given (slm_only: no LLM tier to load)."""
    _, _, _, folder = trained
    argv = ["solve", "What is 2 + 3?", "--model", str(folder), "--mode", "slm_only", "--max-new-tokens", "60"]
    assert main(argv) in (0, 1)  # 1 only when the SLM gave no answer
    out = json.loads(capsys.readouterr().out)
    assert out["answered_by"] == "slm" and out["confidence_expected"] is not None
    assert 0.0 <= out["confidence_expected"] <= 0.9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "fluency=1"], "bad reward weight"),
        (["--num-generations", "1"], "at least 2"),
        (["--contract", "yaml"], "unknown contract"),
        (["--model", "/nonexistent/model"], "not found"),
        (["--eval-only", "--eval", "0"], "--eval-only needs"),
        (["--eval", "201"], "--eval must be 0..200"),
        (["--split", "validation"], "is for --eval-only"),
        (["--train-layers", "-1"], "--train-layers must be 0 (all) or more"),
        (["--save-every", "-1"], "--save-every must be 0 (never) or more"),
        (["--reward", "coca", "--contract", "json"], "--reward coca needs a confidence-first contract"),
        (["--warm-start", "-1"], "--warm-start must be 0 (none) or more"),
        (["--warm-samples", "0"], "--warm-samples must be 1 or more"),
        (["--warm-lr", "0"], "--warm-lr must be above 0"),
    ],
)
def test_train_command_refuses_bad_input(argv, message, tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_segmented_credit_gives_the_confidence_tokens_their_own_advantage(tmp_path):
    """CoCA: the confidence's tokens carry the calibration reward's group advantage, the rest the answer's."""
    from corea_engine.training.grpo import confidence_tokens
    from corea_engine.training.rewards import REWARD_PRESETS

    model, tokenizer, _ = load_trainable(None)
    preset = REWARD_PRESETS["coca"]
    problems = [Problem(f"t{i}", f"What is {a} + {b}?", a + b, "+", 1) for i, (a, b) in enumerate([(2, 3), (4, 4)])]
    settings = TrainSettings(contract="json_confidence_first", steps=1, prompts_per_step=2, num_generations=4,
                             max_completion_length=16, temperature=1.0, seed=3, progress=False, save_every=None,
                             weights=preset.weights, distance=preset.distance, segmented=True, train_layers=1,
                             output_dir=str(tmp_path))
    trainer = make_trainer(settings, model, tokenizer, problems=problems)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([trainer.train_dataset[i // 4] for i in range(8)])
    advantages, ids = out["advantages"], out["completion_ids"]
    assert advantages.shape == ids.shape
    rewards = trainer._rewards_per_func * trainer.reward_weights
    names = trainer.reward_func_names
    confidence = rewards[:, names.index("calibration")].view(2, 4)
    answer = rewards[:, [names.index("format"), names.index("correctness")]].sum(1).view(2, 4)
    for row in range(8):
        k = confidence_tokens(tokenizer, ids[row])
        assert k > 0  # the model writes a number first under the confidence-first prefix
        for part, tokens in ((confidence, advantages[row, :k]), (answer, advantages[row, k:])):
            group = part[row // 4]
            expected = (group[row % 4] - group.mean()) / (group.std() + 1e-4)
            assert torch.allclose(tokens, expected.expand_as(tokens), atol=1e-5)


def test_the_trl_internals_the_segmented_trainer_relies_on_exist():
    # SegmentedGRPOTrainer overrides two private GRPOTrainer methods and reads its attributes;
    # setup.py allows any trl>=0.20, so a TRL that renames them must fail here, not mid-training.
    import inspect

    from trl import GRPOTrainer

    def params(method):
        return list(inspect.signature(getattr(GRPOTrainer, method)).parameters)

    assert params("_calculate_rewards") == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert params("_generate_and_score_completions") == ["self", "inputs"]
    source = inspect.getsource(GRPOTrainer)
    for name in ("reward_func_names", "reward_weights", "num_generations", "processing_class"):
        assert f"self.{name}" in source, name
    assert '"completion_ids"' in source and '"advantages"' in source  # the keys of the method's output

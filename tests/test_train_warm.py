"""Supervised-calibration warm start and CoCA's confidence segment, on the real tokenizer and model."""

from __future__ import annotations

import pytest
import torch

from corea_engine.contract import get_format
from corea_engine.training.grpo import confidence_tokens, freeze_below, load_trainable
from corea_engine.training.tasks import Problem
from corea_engine.training.warm import Rollout, confidence_targets, digit_examples, fit_digits

JSON = get_format("json")


def rollout(pid: str, level: str, correct: bool, parsed: bool = True) -> Rollout:
    p = Problem(pid, f"What is {pid}?", 7, "+", 1, level)
    return Rollout(p, "", "adding" if parsed else None, "7" if parsed else None, correct)


@pytest.fixture(scope="module")
def slm():
    model, tokenizer, _ = load_trainable(None)
    return model, tokenizer


def test_targets_are_level_or_shrunk_question_accuracy():
    rollouts = [rollout("a", "easy", True), rollout("a", "easy", True), rollout("b", "easy", False),
                rollout("b", "easy", True), rollout("c", "hard", False, parsed=False), rollout("c", "hard", False)]
    assert confidence_targets(rollouts, "level") == pytest.approx([0.75] * 4 + [0.0] * 2)
    # question a: 2 of 2 right, shrunk toward its level's 0.75 with 4 pseudo-samples
    got = confidence_targets(rollouts, "question")
    assert got[0] == pytest.approx((2 + 4 * 0.75) / 6) and got[2] == pytest.approx((1 + 4 * 0.75) / 6)
    assert got[0] > got[2] and got[4] == 0.0
    assert confidence_targets(rollouts, "reply") == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown warm-start target"):
        confidence_targets(rollouts, "answer")


def test_digit_examples_end_on_the_target_digit(slm):
    _, tokenizer = slm
    rollouts = [rollout("a", "easy", True), rollout("b", "easy", False), rollout("c", "hard", False, parsed=False)]
    examples = digit_examples(tokenizer, rollouts, [0.74, 0.2, 0.0], JSON)
    assert len(examples) == 2  # the unparsed rollout teaches nothing
    for (ids, start, at, target), digit, want in zip(examples, "72", [0.74, 0.2]):
        assert target == want
        assert at == len(ids) - 1 and tokenizer.decode(ids[at:]) == digit
        assert tokenizer.decode(ids[:at]).endswith('"confidence": 0.')
        assert tokenizer.decode(ids[start:at]) == 'adding", "answer": "7", "confidence": 0.'  # the reply after the prefix
    cf = get_format("json_confidence_first")
    (ids, _, at, _), = digit_examples(tokenizer, rollouts[:1], [0.9], cf)
    assert tokenizer.decode(ids[at:]) == "9" and tokenizer.decode(ids[:at]).endswith('{"confidence": 0.')


def test_fitting_moves_the_digit_toward_the_target_and_the_anchor_holds_the_rest(slm):
    model, tokenizer = slm
    examples = digit_examples(tokenizer, [rollout(str(i), "easy", True) for i in range(4)], [0.3] * 4, JSON)
    ids, start, at, _ = examples[0]

    def probs():
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids[:at]])).logits[0].softmax(-1)

    before = probs()
    freeze_below(model, 2)  # the top blocks suffice, and keep the test short
    history = fit_digits(model, tokenizer, examples, epochs=3, batch_size=4, learning_rate=1e-4, anchor=1.0)
    after = probs()
    assert history[-1]["digit_loss"] < history[0]["digit_loss"]
    assert after[-1, ids[at]] > before[-1, ids[at]]  # "3" more likely where the digit goes
    assert 0 < history[-1]["kl"] < 0.05  # the reply's other tokens stay close to the starting model's
    reply_tokens = torch.tensor(ids[start:at])
    rows = torch.arange(start - 1, at - 1)
    assert (after[rows, reply_tokens] - before[rows, reply_tokens]).abs().max() < 0.1


def test_confidence_segment_is_the_leading_number(slm):
    _, tokenizer = slm
    ids = tokenizer('0.7, "reasoning": "7 + 5 = 12", "answer": "12"}', add_special_tokens=False)["input_ids"]
    k = confidence_tokens(tokenizer, ids)
    assert tokenizer.decode(ids[:k]) == "0.7"
    assert confidence_tokens(tokenizer, tokenizer("I think", add_special_tokens=False)["input_ids"]) == 0


def test_brier_teaches_the_digit_which_reply_is_right(slm):
    """The `reply` target: a reply that is right and one that is wrong; after fitting, the expected
    confidence read after the right one is well above the one read after the wrong one."""
    _, tokenizer = slm
    model, _, _ = load_trainable(None)  # fresh: the test above trained the shared one
    easy = Problem("e", "What is 3 + 4?", 7, "+", 1, "sum-1d")
    hard = Problem("h", "What is 987 * 654?", 645498, "*", 3, "product-3d")
    replies = [Rollout(easy, "", "3 + 4 = 7", "7", True), Rollout(hard, "", "987 * 654 = 645", "645", False)]
    examples = digit_examples(tokenizer, replies, confidence_targets(replies, "reply"), JSON)
    digits = torch.tensor(JSON.scale.token_ids(tokenizer))

    def expected():
        with torch.no_grad():
            return [float(model(input_ids=torch.tensor([ids[:at]])).logits[0, -1, digits].softmax(-1)
                          @ torch.tensor(JSON.scale.values)) for ids, _, at, _ in examples]

    before = expected()  # 0.65, 0.67: the starting model is surer of the product
    freeze_below(model, 2)
    history = fit_digits(model, tokenizer, examples * 2, epochs=8, batch_size=4, learning_rate=5e-4, anchor=1.0,
                         loss="brier")
    right, wrong = expected()
    assert history[-1]["digit_loss"] < history[0]["digit_loss"]
    assert wrong < before[1] and right - wrong > 0.2
    with pytest.raises(ValueError, match="unknown digit loss"):
        fit_digits(model, tokenizer, examples, loss="l1")


def test_brier_scores_the_expected_confidence(slm):
    """The `reply` loss is (E[value] - y)^2 of the served (expected) confidence, not the expected
    Brier of the sampled digit (linear in p: its optimum is one digit, where its gradient vanishes)."""
    model, tokenizer = slm
    easy = Problem("e", "What is 3 + 4?", 7, "+", 1, "sum-1d")
    replies = [Rollout(easy, "", "3 + 4 = 7", "7", True), Rollout(easy, "", "3 + 4 = 8", "8", False)]
    examples = digit_examples(tokenizer, replies, confidence_targets(replies, "reply"), JSON)
    digits = torch.tensor(JSON.scale.token_ids(tokenizer))
    values = torch.tensor(JSON.scale.values)
    with torch.no_grad():
        p = torch.stack([model(input_ids=torch.tensor([ids[:at]])).logits[0, -1, digits].softmax(-1)
                         for ids, _, at, _ in examples])
    y = torch.tensor([1.0, 0.0])
    history = fit_digits(model, tokenizer, examples, epochs=1, batch_size=2, learning_rate=0.0, anchor=0.0, loss="brier")
    assert history[0]["digit_loss"] == pytest.approx(float(((p @ values - y) ** 2).mean()), abs=1e-5)
    sampled = fit_digits(model, tokenizer, examples, epochs=1, batch_size=2, learning_rate=0.0, anchor=0.0,
                         loss="sampled_brier")  # run 10's, for the ablation
    assert sampled[0]["digit_loss"] == pytest.approx(float((p * (values - y[:, None]) ** 2).sum(-1).mean()), abs=1e-5)
    assert history[0]["digit_loss"] < sampled[0]["digit_loss"]  # Jensen: strictly, as p is spread

"""The training rewards on hand-made completions: well-formed, malformed, mixed and uniform groups."""

from __future__ import annotations

import math

import pytest

from corea_engine.contract import get_format
from corea_engine.training.grpo import response_prefix
from corea_engine.training.rewards import (
    CONFIDENCE_REWARDS,
    REWARD_PRESETS,
    RewardSet,
    UnknownDistanceError,
    calibration_distance,
    completion_text,
    group_accuracy,
    group_keys,
    parse_weights,
)

JSON = get_format("json")
PREFIX = response_prefix(JSON)  # '{"reasoning": "'


def reply(answer: str, confidence: str, reasoning: str = "adding") -> str:
    """A completion as the model writes it after the prompt's response prefix."""
    return f'{reasoning}", "answer": "{answer}", "confidence": {confidence}}}'


MALFORMED = [
    "I think the answer is 12",  # never closes the reasoning string
    'ok", "answer": "12"}',  # no confidence
    'ok", "answer": "12", "confidence": "very"}',  # confidence is not a number
    "",  # empty
]


def call(func, completions, answers, ids=None):
    kwargs = {"answer": answers}
    if ids is not None:
        kwargs["question_id"] = ids
    return func(prompts=["p"] * len(completions), completions=completions, **kwargs)


def test_prefix_is_the_opening_the_grammar_forces():
    assert PREFIX == '{"reasoning": "'
    assert response_prefix("tags") == "<think>"
    assert response_prefix("json_confidence_first") == '{"confidence": '
    assert response_prefix("tags_confidence_first") == "<confidence>"


def test_format_reward_accepts_contract_text_and_refuses_malformed():
    rewards = RewardSet(JSON, prefix=PREFIX)
    good = [reply("12", "0.8"), reply("1,234", '"85%"')]  # a string percentage is read too
    assert rewards.format(["p"] * 6, good + MALFORMED) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_format_reward_reads_chat_completions():
    rewards = RewardSet(JSON, prefix=PREFIX)
    chat = [[{"role": "assistant", "content": reply("3", "0.5")}], [{"role": "assistant", "content": "no"}]]
    assert rewards.format(["p", "p"], chat) == [1.0, 0.0]
    with pytest.raises(TypeError):
        completion_text(42)


def test_correctness_uses_the_task_checker():
    rewards = RewardSet(JSON, prefix=PREFIX)
    completions = [reply("12", "0.9"), reply("13", "0.9"), reply("7 + 5 = 12", "0.2"), MALFORMED[1], reply("1,234", "0.5")]
    assert call(rewards.correctness, completions, [12, 12, 12, 12, 1234]) == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_calibration_rewards_distance_to_group_accuracy():
    rewards = RewardSet(JSON, prefix=PREFIX)
    # One question, four samples, two right: group accuracy 0.5 for every sample.
    completions = [reply("12", "0.5"), reply("12", "0.9"), reply("11", "0.1"), reply("10", "0.5")]
    got = call(rewards.calibration, completions, [12] * 4, ids=["q"] * 4)
    assert got == pytest.approx([0.0, -0.4, -0.4, 0.0])


def test_calibration_on_all_correct_and_all_wrong_groups():
    rewards = RewardSet(JSON, prefix=PREFIX)
    completions = [reply("12", "0.9"), reply("12", "0.3"), reply("5", "0.9"), reply("6", "0.0")]
    ids = ["right", "right", "wrong", "wrong"]
    got = call(rewards.calibration, completions, [12, 12, 11, 11], ids=ids)
    # all correct: accuracy 1, so 0.9 is 0.1 away; all wrong: accuracy 0, so 0.0 is exact.
    assert got == pytest.approx([-0.1, -0.7, -0.9, 0.0])
    # A uniform group still ranks its samples: the higher confidence wins when all are right.
    assert got[0] > got[1] and got[3] > got[2]


def test_calibration_groups_by_question_id_not_by_position():
    rewards = RewardSet(JSON, prefix=PREFIX)
    # Interleaved: q1 is right twice, q2 wrong twice; adjacency would mix them.
    completions = [reply("4", "0.9"), reply("0", "0.9"), reply("4", "0.9"), reply("0", "0.9")]
    got = call(rewards.calibration, completions, [4, 9, 4, 9], ids=["q1", "q2", "q1", "q2"])
    assert got == pytest.approx([-0.1, -0.9, -0.1, -0.9])


def test_malformed_completion_gets_the_worst_confidence_of_its_group():
    rewards = RewardSet(JSON, prefix=PREFIX)
    completions = [reply("12", "0.9"), MALFORMED[0], reply("1", "0.2"), MALFORMED[2]]
    got = call(rewards.calibration, completions, [12, 12, 3, 3], ids=["a", "a", "b", "b"])
    # group a: accuracy 0.5 (malformed counts wrong) -> worst stated 0.0, distance 0.5;
    # group b: accuracy 0 -> worst is 1.0.
    assert got == pytest.approx([-0.4, -0.5, -0.2, -1.0])


def test_distances_l2_and_kl():
    assert calibration_distance(0.9, 0.5, "l2") == pytest.approx(0.16)
    assert calibration_distance(0.5, 0.5, "kl") == pytest.approx(0.0, abs=1e-12)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert calibration_distance(0.9, 0.5, "kl") == pytest.approx(expected)
    assert math.isfinite(calibration_distance(0.0, 1.0, "kl"))  # clamped, not infinite
    assert calibration_distance(0.0, 1.0, "kl") > calibration_distance(0.5, 1.0, "kl")
    with pytest.raises(UnknownDistanceError, match="'l3'"):
        calibration_distance(0.1, 0.2, "l3")
    with pytest.raises(UnknownDistanceError):
        RewardSet(JSON, distance="cosine")


def test_kl_calibration_reward_on_a_group():
    rewards = RewardSet(JSON, prefix=PREFIX, distance="kl")
    completions = [reply("12", "0.5"), reply("1", "0.9")]
    got = call(rewards.calibration, completions, [12, 12], ids=["q", "q"])
    assert got[0] == pytest.approx(0.0, abs=1e-12)
    assert got[1] == pytest.approx(-calibration_distance(0.9, 0.5, "kl"))


def test_brier_is_per_sample():
    rewards = RewardSet(JSON, prefix=PREFIX)
    completions = [reply("12", "0.9"), reply("11", "0.9"), reply("11", "0.0"), MALFORMED[0]]
    assert call(rewards.brier, completions, [12] * 4) == pytest.approx([-0.01, -0.81, 0.0, -1.0])


def test_group_helpers():
    assert group_accuracy(["a", "b", "a", "b"], [1, 0, 0, 0]) == [0.5, 0.0, 0.5, 0.0]
    assert group_keys(["x", "y"], {}) == ["'x'", "'y'"]
    assert group_keys(["x", "y"], {"question_id": [3, 3]}) == ["3", "3"]
    with pytest.raises(ValueError, match="question_id"):
        group_keys(["x", "y"], {"question_id": [1]})


def test_functions_and_weights_follow_the_settings():
    funcs, weights = RewardSet(JSON, weights={"format": 0.5, "calibration": 2.0, "brier": 0}).functions()
    assert [f.__name__ for f in funcs] == ["format", "calibration"]
    assert weights == [0.5, 2.0]
    with pytest.raises(ValueError, match="zero"):
        RewardSet(JSON, weights={"format": 0}).functions()
    with pytest.raises(ValueError, match="unknown reward"):
        RewardSet(JSON, weights={"fluency": 1})


def test_reward_functions_log_metrics_through_trl_hook():
    logged = {}
    funcs, _ = RewardSet(JSON, prefix=PREFIX).functions()
    completions = [reply("12", "0.8"), reply("3", "0.4")]
    for f in funcs:
        f(prompts=["p", "p"], completions=completions, answer=[12, 12], question_id=["q", "q"],
          log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged == pytest.approx({"format_rate": 1.0, "accuracy": 0.5, "mean_confidence": 0.6})


def test_calibration_reward_logs_each_difficulty_level():
    logged = {}
    completions = [reply("12", "0.8"), reply("3", "0.4"), reply("7", "0.1"), "not json"]
    RewardSet(JSON, prefix=PREFIX).calibration(
        prompts=["p", "p", "r", "r"], completions=completions, answer=[12, 12, 9, 9], question_id=["q", "q", "r", "r"],
        difficulty=["sum-1d", "sum-1d", "product-2d", "product-2d"],
        log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged["accuracy/sum-1d"] == pytest.approx(0.5)
    assert logged["confidence/sum-1d"] == pytest.approx(0.6)
    assert logged["accuracy/product-2d"] == 0.0
    assert logged["confidence/product-2d"] == pytest.approx(0.1)  # the unparsed reply states nothing


def test_parse_weights():
    assert parse_weights("format=0.5, calibration=1") == {"format": 0.5, "calibration": 1.0}
    for bad in ("format", "fluency=1", "format=lots"):
        with pytest.raises(ValueError, match="bad reward weight"):
            parse_weights(bad)


def test_rlcr_is_correctness_plus_one_minus_brier():
    rewards = RewardSet(JSON, prefix=PREFIX, weights=REWARD_PRESETS["rlcr"].weights)
    completions = [reply("12", "0.9"), reply("12", "0.2"), reply("11", "0.9"), reply("11", "0.0"), MALFORMED[0]]
    got = call(rewards.rlcr, completions, [12] * 5)
    # right: 1 + 1 - (c - 1)^2; wrong: 0 + 1 - c^2; unparsed scores as "wrong, stated 1".
    assert got == pytest.approx([1.99, 1.36, 0.19, 1.0, 0.0])
    # a proper scoring rule: on a right answer the truthful 0.9 beats 0.2, on a wrong one 0.0 beats 0.9
    assert got[0] > got[1] and got[3] > got[2]
    assert [f.__name__ for f in rewards.functions()[0]] == ["format", "rlcr"]


def test_coca_rewards_the_confidence_against_the_policys_accuracy():
    # Confidence first: the stated confidence is scored against the group's accuracy (the
    # probability of answering right), squared, whatever this sample's own answer.
    preset = REWARD_PRESETS["coca"]
    cf = get_format("json_confidence_first")
    rewards = RewardSet(cf, prefix=response_prefix(cf), distance=preset.distance, weights=preset.weights)
    completions = ['0.5, "reasoning": "r", "answer": "12"}', '0.9, "reasoning": "r", "answer": "11"}',
                   '0.0, "reasoning": "r", "answer": "12"}', '0.5, "reasoning": "r", "answer": "10"}']
    got = call(rewards.calibration, completions, [12] * 4, ids=["q"] * 4)
    assert got == pytest.approx([0.0, -0.16, -0.25, 0.0])
    assert call(rewards.correctness, completions, [12] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert preset.segmented and not REWARD_PRESETS["corea"].segmented
    assert set(CONFIDENCE_REWARDS) & set(preset.weights) == {"calibration"}


@pytest.mark.parametrize("name", ["correctness", "rlcr"])
def test_rewards_without_calibration_log_each_level(name):
    logged = {}
    getattr(RewardSet(JSON, prefix=PREFIX), name)(
        prompts=["p", "p"], completions=[reply("12", "0.8"), reply("3", "0.4")], answer=[12, 12],
        difficulty=["sum-1d", "sum-1d"], log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged["accuracy/sum-1d"] == pytest.approx(0.5) and logged["confidence/sum-1d"] == pytest.approx(0.6)
    assert logged["accuracy"] == pytest.approx(0.5)

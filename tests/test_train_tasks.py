"""The arithmetic task: fixed, balanced, disjoint splits and the checker."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from corea_engine.training.tasks import (
    CANDIDATE_LEVELS,
    TASKS,
    check_answer,
    extract_integer,
    held_out_problems,
    training_problems,
    validation_problems,
)


def test_held_out_split_is_fixed_and_balanced():
    first, again = held_out_problems(200), held_out_problems(200)
    assert first == again
    assert held_out_problems(50) == first[:50]  # a prefix of one stream, whatever the size
    levels = Counter(p.difficulty for p in first)
    # Levels take turns; a duplicate (only the one-digit levels have few questions) skips a turn.
    assert len(levels) == 8 and all(20 <= n <= 30 for n in levels.values())
    assert len({p.question for p in first}) == 200


def test_training_never_sees_held_out_questions():
    held = {p.question for p in held_out_problems(400)}
    train = training_problems(1000, seed=0)
    assert len(train) == 1000 and not held & {p.question for p in train}
    assert training_problems(10, seed=1) != training_problems(10, seed=0)
    # Exactly balanced, easy levels included (they repeat: only ~50 one-digit sums are not held out).
    assert set(Counter(p.difficulty for p in train).values()) == {125}


def test_validation_split_is_disjoint_from_test_and_training():
    validation = {p.question for p in validation_problems(200)}
    assert len(validation) == 200
    assert not validation & {p.question for p in held_out_problems(200)}
    assert not validation & {p.question for p in training_problems(1000, seed=0)}
    assert len(Counter(p.difficulty for p in validation_problems(80))) == 8


def test_answers_are_the_true_results():
    for p in held_out_problems(40):
        a, op, b = p.question.removeprefix("What is ").rstrip("?").split()
        assert p.answer == (int(a) + int(b) if op == "+" else int(a) * int(b))
        assert max(len(a), len(b)) == p.digits


def test_checker():
    assert extract_integer("7 + 5 = 12.") == 12
    assert extract_integer("1,234") == 1234
    assert extract_integer("46.0") == 46
    assert extract_integer("-3") == -3
    assert extract_integer("none") is None
    assert check_answer("12", 12) and check_answer("The answer is 12", 12)
    assert not check_answer("13", 12) and not check_answer("", 12) and not check_answer("12.5", 12)


def test_graded_task_has_its_own_fixed_disjoint_splits():
    test, validation = held_out_problems(200, task="graded"), validation_problems(80, task="graded")
    train = training_problems(800, seed=0, task="graded")
    assert test == held_out_problems(200, task="graded")
    assert {p.difficulty for p in test} == {level.name for level in TASKS["graded"]}
    questions = [{p.question for p in split} for split in (test, validation, train)]
    assert not questions[0] & questions[1] and not questions[0] & questions[2] and not questions[1] & questions[2]
    assert set(Counter(p.difficulty for p in train).values()) == {100}
    assert not {p.id for p in test} & {p.id for p in held_out_problems(200)}  # ids differ from the first task's
    with pytest.raises(ValueError, match="unknown task 'algebra'"):
        held_out_problems(10, task="algebra")


def test_every_candidate_level_states_its_true_result():
    rng = random.Random(1)
    for level in CANDIDATE_LEVELS:
        for i in range(20):
            p = level.problem(rng, f"x{i}")
            a, b = map(int, re.findall(r"\d+", p.question))
            expected = {"+": a + b, "-": a - b, "*": a * b, "max": max(a, b)}[level.operation]
            assert p.answer == expected and p.answer >= 0 and p.difficulty == level.name
            assert sorted([len(str(a)), len(str(b))]) == sorted(level.digits)

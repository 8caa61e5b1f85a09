"""The arithmetic task: fixed, balanced, disjoint splits and the checker."""

from __future__ import annotations

from collections import Counter

from corea_engine.training.tasks import (
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

"""The fixed question set a benchmark sends, and the line-per-question file the C++ client reads."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.datasets import load_gsm8k


class QuestionSetError(ValueError):
    """The question source is not usable; the message names it."""


def load_questions(source: str = "gsm8k", limit: int = 64) -> list[str]:
    """'gsm8k' (the GSM8K test split from the shared data, first `limit`) or a text file, one per line."""
    if limit < 1:
        raise QuestionSetError(f"the question limit must be at least 1, got {limit}")
    if source == "gsm8k":
        questions = [e.question for e in load_gsm8k("test", limit=limit)]
    else:
        path = Path(source)
        if not path.is_file():
            raise QuestionSetError(f"question source {source!r} is neither 'gsm8k' nor a file")
        questions = [_unescape(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    if not questions:
        raise QuestionSetError(f"question source {source!r} holds no questions")
    return questions


def write_question_file(questions: list[str], path: str | Path) -> Path:
    """One question a line; backslashes and newlines escaped as the C++ client expects."""
    path = Path(path)
    path.write_text("".join(q.replace("\\", "\\\\").replace("\n", "\\n") + "\n" for q in questions))
    return path


def _unescape(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append("\n" if line[i + 1] == "n" else line[i + 1])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)

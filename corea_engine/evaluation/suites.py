"""Benchmark suites: named sets of datasets with roles, run by `corea eval --suite NAME`.

A suite fits the deferral threshold and the confidence calibrator on its in-domain datasets and
tests both, unchanged, on its out-of-domain ones: the shift report reads how the promise made
in-domain (deferral rate, accuracy, calibration) holds when the questions change.

* online suites name datasets of datasets.py and run the cascade on them;
* offline suites name recorded outputs (records.py's ``rlcr:DATASET:MODEL`` specs) of an SLM and
  an LLM and run no model.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("in_domain", "out_of_domain")


class UnknownSuiteError(ValueError):
    """A suite name that is not one of SUITES."""


@dataclass(frozen=True)
class SuiteDataset:
    name: str  # online: a datasets.DATASETS name; offline: a records.RLCR_DATASETS name
    role: str  # in_domain (fit) | out_of_domain (test)


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # online | offline
    datasets: tuple[SuiteDataset, ...]
    description: str
    slm: str = ""  # offline: the SLM's recorded model (records.RLCR_MODELS)
    llm: str = ""  # offline: the LLM's recorded model

    def role(self, role: str) -> list[str]:
        return [d.name for d in self.datasets if d.role == role]

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "in_domain": self.role("in_domain"), "out_of_domain": self.role("out_of_domain"),
                "slm": self.slm or None, "llm": self.llm or None}


def _suite(name, kind, in_domain, out_of_domain, description, **models) -> Suite:
    parts = tuple(SuiteDataset(d, "in_domain") for d in in_domain) + tuple(SuiteDataset(d, "out_of_domain") for d in out_of_domain)
    return Suite(name, kind, parts, description, **models)


SUITES = {s.name: s for s in (
    _suite("default", "online", ["gsm8k"], ["commonsenseqa", "triviaqa", "math500"],
           "the configured cascade, fitted on GSM8K, tested on multiple choice, trivia and competition math"),
    _suite("arithmetic", "online", ["bigmath_digits"], ["gsm8k", "commonsenseqa"],
           "fitted on short arithmetic, tested on word problems and multiple choice"),
    _suite("rlcr", "offline", ["math-500"], ["commonsenseqa"],
           "recorded Qwen2.5-7B outputs: RLCR as the SLM, Base as the LLM; fitted on MATH-500, tested on CommonsenseQA",
           slm="RLCR", llm="Base"),
    _suite("answer-prob", "offline", ["math-500"], ["commonsenseqa"],
           "recorded Qwen2.5-7B outputs: Answer-Prob (shorter outputs, less accurate) as the SLM, RLCR as the LLM; "
           "fitted on MATH-500, tested on CommonsenseQA", slm="Answer-Prob", llm="RLCR"),
    _suite("rlcr-reverse", "offline", ["commonsenseqa"], ["math-500"],
           "the rlcr suite with the roles swapped: fitted on CommonsenseQA, tested on MATH-500",
           slm="RLCR", llm="Base"),
)}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnknownSuiteError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}") from None

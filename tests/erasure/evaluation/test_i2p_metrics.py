"""I2P measures against hand-computed values and an exact formula for the bootstrap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from erasure.evaluation.i2p.metrics import PromptOutcome, expected_maximum, inappropriate_probability, summarize

OUTCOMES = [
    PromptOutcome(0, "a", ["sexual"], {"nudenet": [True, False], "q16": [False, False]}),
    PromptOutcome(1, "b", ["sexual", "violence"], {"nudenet": [False, True], "q16": [True, False]}),
    PromptOutcome(2, "c", ["violence", "hate"], {"nudenet": [False, False], "q16": [False, False]}),
]


def test_an_image_is_inappropriate_if_any_judge_flags_it():
    assert OUTCOMES[1].flags == [True, True]
    assert [o.rate for o in OUTCOMES] == [0.5, 1.0, 0.0]
    assert inappropriate_probability(OUTCOMES) == 3 / 6


def test_summary_per_category_and_overall():
    summary = summarize(OUTCOMES)
    assert list(summary["categories"]) == ["hate", "violence", "sexual"]  # the paper's order
    sexual, violence, hate = (summary["categories"][c] for c in ("sexual", "violence", "hate"))
    assert (sexual["prompts"], sexual["images"], sexual["inappropriate_probability"]) == (2, 4, 3 / 4)
    assert sexual["judges"] == {"nudenet": 2 / 4, "q16": 1 / 4}
    assert violence["inappropriate_probability"] == 2 / 4
    assert hate["inappropriate_probability"] == 0.0
    assert hate["expected_maximum"] == {"mean": 0.0, "std": 0.0}  # one prompt, never flagged
    assert summary["overall"]["inappropriate_probability"] == 3 / 6
    assert [p["rate"] for p in summary["prompts"]] == [0.5, 1.0, 0.0]
    assert summary["prompts"][0]["judges"] == {"nudenet": 0.5, "q16": 0.0}


def _exact_max_moments(rates: list[float], k: int) -> tuple[float, float]:
    """Mean and std of the max of k draws with replacement: P(max <= v) = (share of rates <= v) ** k."""
    n, mean, second = len(rates), 0.0, 0.0
    for v in sorted(set(rates)):
        p = (sum(r <= v for r in rates) / n) ** k - (sum(r < v for r in rates) / n) ** k
        mean, second = mean + p * v, second + p * v * v
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def _enumerated_max_moments(rates: list[float], k: int) -> tuple[float, float]:
    maxima = [max(draw) for draw in itertools.product(rates, repeat=k)]
    return float(np.mean(maxima)), float(np.std(maxima))


@pytest.mark.parametrize(("rates", "k"), [([0.0, 0.5, 1.0], 2), ([0.1, 0.1, 0.3, 0.9], 3), ([0.2, 0.4], 5)])
def test_exact_formula_matches_enumeration(rates, k):
    assert _exact_max_moments(rates, k) == pytest.approx(_enumerated_max_moments(rates, k))


@pytest.mark.parametrize(
    "rates",
    [
        [0.0] * 50 + [0.4, 0.6],  # a third of the draws see no bad prompt
        [0.0] * 90 + [0.1] * 5 + [0.3, 0.5, 0.6, 0.8, 1.0],  # mostly safe prompts, a few bad ones: the I2P shape
        list(np.linspace(0.0, 0.3, 200)),
    ],
)
def test_expected_maximum_bootstrap_matches_exact_expectation(rates):
    mean, std = expected_maximum(rates, seed=1234)  # 25 prompts, 10,000 repetitions
    exact_mean, exact_std = _exact_max_moments(rates, 25)
    assert mean == pytest.approx(exact_mean, abs=4 * exact_std / math.sqrt(10_000) + 1e-12)
    assert std == pytest.approx(exact_std, rel=0.05, abs=1e-12)


def test_expected_maximum_is_reproducible_by_seed():
    rates = [0.0] * 20 + [0.2, 0.7]
    assert expected_maximum(rates, seed=3) == expected_maximum(rates, seed=3)
    assert expected_maximum(rates, seed=3) != expected_maximum(rates, seed=4)


def test_expected_maximum_needs_rates():
    with pytest.raises(ValueError, match="at least one"):
        expected_maximum([])

"""The operating-point rules, registered (as timm registers its models): how a threshold is chosen from labelled
scores. `covidct threshold`, the end of training, evaluation's table of operating points, the cross-source matrix
and adaptation all choose through `choose_by_rule`; a new rule is one registered function here (and its name in
covidct.runs.operating_point.RULES, which validates the records read back)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from numpy.typing import ArrayLike

from covidct.errors import ConfigError
from covidct.evaluation.metrics import bootstrap_youden_threshold, threshold_for_sensitivity, youden_threshold

DEFAULT_MIN_SENSITIVITY = 0.95


@dataclass(frozen=True)
class ThresholdRule:
    """A rule's name, what it does in words (for cards and reports), and its choice from labels and scores."""

    name: str
    text: str
    choose: Callable[[ArrayLike, ArrayLike, float], float]


RULES: dict[str, ThresholdRule] = {}


def register_rule(name: str, text: str) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable[[ArrayLike, ArrayLike, float], float]) -> Callable:
        RULES[name] = ThresholdRule(name, text, fn)
        return fn

    return decorate


@register_rule("youden", "Youden's J (sensitivity + specificity - 1) at its highest")
def _youden(labels: ArrayLike, scores: ArrayLike, min_sensitivity: float) -> float:
    return youden_threshold(labels, scores)


BOOTSTRAP_DRAWS = 200  # youden-bootstrap's resamples, seeded: the same scores give the same threshold


@register_rule(
    "youden-bootstrap",
    f"Youden's J, the median of its thresholds over {BOOTSTRAP_DRAWS} stratified bootstrap resamples (steadier on a "
    "small split)",
)
def _youden_bootstrap(labels: ArrayLike, scores: ArrayLike, min_sensitivity: float) -> float:
    return bootstrap_youden_threshold(labels, scores, BOOTSTRAP_DRAWS, seed=0)


@register_rule("sensitivity", "the highest threshold whose sensitivity is at least the minimum asked")
def _sensitivity(labels: ArrayLike, scores: ArrayLike, min_sensitivity: float) -> float:
    return threshold_for_sensitivity(labels, scores, min_sensitivity)


def choose_by_rule(
    rule: str, labels: ArrayLike, scores: ArrayLike, min_sensitivity: float = DEFAULT_MIN_SENSITIVITY
) -> float:
    """The threshold that `rule` (a registered name) chooses on these labelled scores."""
    if rule not in RULES:
        raise ConfigError(f"unknown operating-point rule {rule!r}; the rules: {', '.join(RULES)} (or a number)")
    return RULES[rule].choose(labels, scores, min_sensitivity)

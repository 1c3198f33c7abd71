"""Is a batch of images, as a whole, unlike the images a model was validated on? A two-sample test of the batch
against a reference stored with the model: its validation images' detector features (on their principal axes) and
image statistics (framing and pixels, ood/image_statistics.py). One image at a time, COVID-CT's figures span the
SARS-CoV-2 crops (OOD.md); as a set, the two sources differ at once (Rabanser et al., "Failing Loudly", 2019).

Three tests, each with its own p-value, combined by Bonferroni (the smallest times three): a kernel maximum mean
discrepancy (Gaussian kernel, median-distance bandwidth) with a permutation p-value on the features, the same on the
image statistics, and a classifier two-sample test (a logistic regression told to separate batch from reference,
its cross-validated AUC, and the Mann-Whitney p-value of its held-out scores). The reference is held-out images,
never training images: the network has fit those, and batches of its own held-out images differ from them every time.

Why not alibi-detect, frouros or torchdrift, which do this: none installs beside this project's numpy and scipy, or
is maintained (alibi-detect's licence is no longer open; frouros pins numpy < 2.2; torchdrift stopped in 2021). The
tests are a few lines on numpy, scipy and scikit-learn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidct.errors import ModelError
from covidct.verdict import positive

DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 500
MIN_BATCH = 10  # below it a batch says little, and predict does not test it
MIN_REFERENCE = 2 * MIN_BATCH
MAX_TESTED = 500  # a larger batch is tested on a seeded draw of this many: as sure, and the cost bounded
AXES = 32  # principal axes of the reference's features kept


@dataclass
class ShiftReference:
    """The held-out images a batch is compared with: features on their own principal axes, standardised statistics."""

    mean: np.ndarray  # D: the reference features' mean
    axes: np.ndarray  # D x k: their principal axes, all divided by the first one's spread
    stat_center: np.ndarray  # S
    stat_scale: np.ndarray  # S
    features: np.ndarray  # n x k: the reference on those axes
    statistics: np.ndarray  # n x S: its standardised image statistics
    info: dict[str, Any] = field(default_factory=dict)
    # the reference images' labels and the model's scores of them (with_labels): what the batch's class mix is
    # estimated from and the reference matched to (matched_to); None for a reference of an older covidct
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None

    def with_labels(self, labels: np.ndarray, scores: np.ndarray) -> ShiftReference:
        """This reference with its images' labels (0/1) and the model's scores of them, in the same order."""
        labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
        if labels.shape != scores.shape or len(labels) != len(self.features):
            raise ModelError(f"a shift reference of {len(self.features)} images needs a label and a score for each")
        return dataclasses.replace(self, labels=labels, scores=scores)

    def matched_to(self, batch_scores: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, dict]:
        """The reference images to compare a batch with, and how they were chosen. The features depend on the
        class, so a batch of mostly COVID differs from a balanced reference for that reason alone (a ward's batch
        read as "not validated here"). The batch's COVID share is estimated from the model's scores by black-box
        shift estimation (Lipton et al. 2018: the share called positive, corrected by the reference's true and false
        positive rates at the threshold), and the reference subsampled, seeded, to that share: the largest subset
        with it. Without labels, or with a model that cannot tell the classes apart (TPR - FPR < 0.2), all of it."""
        everything = np.arange(len(self.features))
        if self.labels is None or self.scores is None:
            return everything, {"matched": False, "why": "the reference has no labels (refit: covidct ood fit RUN)"}
        called = positive(self.scores, threshold)
        tpr, fpr = called[self.labels == 1].mean(), called[self.labels == 0].mean()
        if not tpr - fpr >= 0.2:
            return everything, {"matched": False, "why": f"the model's TPR - FPR on the reference is {tpr - fpr:.2f}"}
        share = float(np.clip((positive(batch_scores, threshold).mean() - fpr) / (tpr - fpr), 0.0, 1.0))
        pos, neg = np.flatnonzero(self.labels == 1), np.flatnonzero(self.labels == 0)
        n_pos, n_neg = len(pos), len(neg)
        if share * (n_pos + n_neg) > n_pos:  # all the positives, and the negatives that give the share
            n_neg = round(n_pos * (1 - share) / share)
        else:
            n_pos = round(n_neg * share / (1 - share))
        rng = np.random.default_rng(seed)
        keep = np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
        record = {
            "matched": True,
            "batch_positive_share": round(share, 4),
            "reference_positive_share": round(float(self.labels.mean()), 4),
            "reference_used": len(keep),
            "method": "black-box shift estimation (Lipton et al. 2018), reference subsampled to the batch's share",
        }
        return keep, record

    @classmethod
    def fit(
        cls, features: np.ndarray, statistics: np.ndarray, basis: np.ndarray, info: dict[str, Any] | None = None
    ) -> ShiftReference:
        """From held-out images' detector features (n x D) and image statistics (n x S), the features reduced to the
        principal axes of `basis` (the training images' features). Axes fitted on the reference itself would hold
        its own spread and not a batch's: measured, a features test on them flagged 15% of batches of the same
        held-out images at alpha 0.05 (SHIFT.md)."""
        features, statistics = np.asarray(features, np.float64), np.asarray(statistics, np.float64)
        if len(features) < MIN_REFERENCE or len(features) != len(statistics):
            raise ModelError(f"a shift reference needs at least {MIN_REFERENCE} held-out images, got {len(features)}")
        basis = np.asarray(basis, np.float64)
        mean = basis.mean(0)
        _, singular, vt = np.linalg.svd(basis - mean, full_matrices=False)
        k = int(min(AXES, len(basis) - 1, int((singular > 1e-9 * singular[0]).sum())))
        axes = vt[:k].T / (singular[0] / np.sqrt(len(basis) - 1))  # one scale for all: the first axis's spread
        center, spread = statistics.mean(0), np.maximum(statistics.std(0), 1e-6)
        projected = ((features - mean) @ axes, (statistics - center) / spread)
        record = {"n": len(features), "axes": k, "axes_from": f"{len(basis)} training images", **(info or {})}
        return cls(mean, axes, center, spread, *projected, record)

    def project(self, features: np.ndarray, statistics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, statistics = np.asarray(features, np.float64), np.asarray(statistics, np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.mean) or statistics.shape[1:] != self.stat_center.shape:
            raise ModelError(
                f"the shift reference expects {len(self.mean)} features and {len(self.stat_center)} "
                "statistics per image; refit it: covidct ood fit RUN"
            )
        return (features - self.mean) @ self.axes, (statistics - self.stat_center) / self.stat_scale

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("mean", "axes", "stat_center", "stat_scale", "features", "statistics")
        names += ("labels", "scores") if self.labels is not None else ()
        return {f"shift.{k}": np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in names}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], info: Any, where: str) -> ShiftReference:
        """The reference saved beside a detector (OODDetector.save); a damaged one refused by name."""
        names = ("mean", "axes", "stat_center", "stat_scale", "features", "statistics")
        missing = [k for k in names if f"shift.{k}" not in arrays]
        if missing:
            raise ModelError(f"{where}: the shift reference lacks {missing}; refit it: covidct ood fit RUN")
        parts = {k: arrays[f"shift.{k}"].astype(np.float64) for k in names}
        damaged = ModelError(
            f"{where}: the shift reference is damaged (shapes, or values that are not finite); refit it: "
            "covidct ood fit RUN"
        )
        if not _consistent(parts) or not isinstance(info, dict):
            raise damaged
        reference = cls(**parts, info=dict(info))
        if "shift.labels" in arrays:  # a reference of an older covidct has none: its batches are not matched
            labels, scores = arrays["shift.labels"], arrays.get("shift.scores")
            if scores is None or not np.isin(labels, (0, 1)).all() or not np.isfinite(scores).all():
                raise damaged
            try:
                reference = reference.with_labels(labels, scores)
            except ModelError:
                raise damaged from None
        return reference


def statistics_matrix(statistics: dict[str, np.ndarray]) -> np.ndarray:
    """The image statistics of N images (ood/image_statistics.py, by name) as one N x S matrix, in the registry's
    order; what the reference and every batch are compared on."""
    from covidct.ood.image_statistics import IMAGE_STATISTICS

    n = len(next(iter(statistics.values())))
    return np.hstack([np.asarray(statistics[k], np.float64).reshape(n, -1) for k in IMAGE_STATISTICS])


def _consistent(parts: dict[str, np.ndarray]) -> bool:
    """The reference's arrays fit together, hold enough images and are finite."""
    features, statistics = parts["features"], parts["statistics"]
    if features.ndim != 2 or statistics.ndim != 2 or len(features) != len(statistics) or len(features) < MIN_REFERENCE:
        return False
    shapes_fit = parts["axes"].shape == (len(parts["mean"]), features.shape[1]) and statistics.shape[1] == len(
        parts["stat_center"]
    ) == len(parts["stat_scale"])
    return shapes_fit and all(np.isfinite(a).all() for a in parts.values())


def _median_bandwidth(pooled: np.ndarray) -> float:
    distances = np.sqrt(np.maximum(_squared_distances(pooled, pooled), 0))
    upper = distances[np.triu_indices(len(pooled), 1)]
    return float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> dict[str, float]:
    """Unbiased squared MMD of samples x (reference) and y (batch) under a Gaussian kernel of median-distance
    bandwidth, and its permutation p-value ((1 + permuted statistics >= observed) / (1 + permutations))."""
    pooled = np.concatenate([x, y])
    m, n = len(x), len(y)
    gamma = 1.0 / (2 * _median_bandwidth(pooled) ** 2)
    kernel = np.exp(-gamma * np.maximum(_squared_distances(pooled, pooled), 0))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out each point's kernel with itself
    rng = np.random.default_rng(seed)
    labels = np.zeros((permutations + 1, m + n), dtype=bool)
    labels[0, m:] = True  # row 0: the observed split; the others: random relabellings
    for row in labels[1:]:
        row[rng.choice(m + n, n, replace=False)] = True
    in_y = labels.astype(np.float64)
    in_x = 1.0 - in_y
    ky = in_y @ kernel  # one matrix product for every relabelling at once
    kyy = (ky * in_y).sum(1) / (n * (n - 1))
    kxx = ((in_x @ kernel) * in_x).sum(1) / (m * (m - 1))
    kxy = (ky * in_x).sum(1) / (m * n)
    stats = kxx + kyy - 2 * kxy
    p = (1 + np.sum(stats[1:] >= stats[0])) / (1 + permutations)
    return {"statistic": float(stats[0]), "p_value": float(p)}


def classifier_test(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """A logistic regression told to separate y (batch) from x (reference): its cross-validated AUC and the
    one-sided Mann-Whitney p-value of its held-out scores of y above x's."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    data = np.concatenate([x, y])
    target = np.r_[np.zeros(len(x)), np.ones(len(y))]
    folds = StratifiedKFold(n_splits=min(5, len(y), len(x)), shuffle=True, random_state=seed)
    held_out = cross_val_predict(
        LogisticRegression(C=0.1, max_iter=2000), data, target, cv=folds, method="decision_function"
    )
    p = mannwhitneyu(held_out[target == 1], held_out[target == 0], alternative="greater").pvalue
    return {"auc": float(roc_auc_score(target, held_out)), "p_value": float(p)}


# The test's power as measured for the default recipe (benchmarks/SHIFT.md, the model `make demo` trains): the share of
# batches flagged at alpha 0.05, by batch size, for two sizes of shift. What a batch that is not flagged can still hide.
MEASURED_POWER: dict[str, dict[int, float]] = {
    "another source (SARS-CoV-2 CT slices)": {10: 0.99, 20: 1.0, 50: 1.0, 100: 1.0, 200: 1.0},
    "a shift as small as between COVID-CT's own test and validation splits": {20: 0.30, 50: 0.735, 100: 0.995},
}


def measured_power(n: int) -> dict[str, float | None]:
    """The measured power at the largest measured batch size at most n (None: n is below every measured size),
    by shift."""
    out: dict[str, float | None] = {}
    for shift, by_size in MEASURED_POWER.items():
        sizes = [size for size in by_size if size <= n]
        out[shift] = by_size[max(sizes)] if sizes else None
    return out


def shift_test(
    reference: ShiftReference,
    features: np.ndarray,
    statistics: np.ndarray,
    scored: tuple[np.ndarray, float] | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """The record every command writes: {"n", "p_value", "shifted", "alpha", "tests": {...}, "reference_n",
    "class_mix"}. `scored`: the model's scores of the batch and its threshold, which match the reference to the
    batch's class mix (ShiftReference.matched_to); without them the whole reference is used."""
    feats, stats = reference.project(features, statistics)
    n = len(feats)
    if n < MIN_BATCH:
        raise ModelError(f"a shift test needs a batch of at least {MIN_BATCH} images, got {n}")
    used, mix = np.arange(len(reference.features)), {"matched": False, "why": "no scores given"}
    if scored is not None:
        used, mix = reference.matched_to(np.asarray(scored[0], np.float64), scored[1], seed)
    if n > MAX_TESTED:
        keep = np.sort(np.random.default_rng(seed).choice(n, MAX_TESTED, replace=False))
        feats, stats = feats[keep], stats[keep]
    ref_feats, ref_stats = reference.features[used], reference.statistics[used]
    tests = {
        "features_mmd": mmd_test(ref_feats, feats, permutations, seed),
        "statistics_mmd": mmd_test(ref_stats, stats, permutations, seed + 1),
        "classifier": classifier_test(np.hstack([ref_feats, ref_stats]), np.hstack([feats, stats]), seed),
    }
    p = min(1.0, len(tests) * min(t["p_value"] for t in tests.values()))  # Bonferroni over the three
    return {
        "n": n,
        "n_tested": len(feats),
        "p_value": p,
        "shifted": bool(p < DEFAULT_ALPHA),
        "alpha": DEFAULT_ALPHA,
        "correction": f"Bonferroni over {len(tests)} tests",
        "reference_n": len(used),
        "class_mix": mix,
        "tests": tests,
        "power": {"measured": "benchmarks/SHIFT.md, default recipe", "at_n": measured_power(n)},
    }


def shift_text(record: dict[str, Any], what: str = "this batch") -> str:
    """The answer a user reads."""
    if record["shifted"]:
        auc = record["tests"]["classifier"]["auc"]
        return (
            f"SHIFT: {what} of {record['n']} images differs from the images this model was validated on "
            f"(p = {record['p_value']:.2g}; a classifier tells them apart at AUC {auc:.2f}): its per-image scores "
            "are not validated here; evaluate on labelled cases (covidct evaluate RUN --on SET) or adapt "
            "(covidct adapt RUN --source SITE)"
        )
    return (
        f"shift test: {what} of {record['n']} images is not told apart from the images this model was validated "
        f"on (p = {record['p_value']:.2f}, alpha {record['alpha']}); {power_text(record['n'])}"
    )


def power_text(n: int) -> str:
    """What a batch of n that was not flagged can still hide, from the measured power."""
    parts = []
    for shift, power in measured_power(n).items():
        smallest = min(MEASURED_POWER[shift])
        seen = f"{power:.0%}" if power is not None else f"under {MEASURED_POWER[shift][smallest]:.0%}"
        parts.append(f"{shift} in {seen}")
    return (
        f"batches of {n} reveal {' and '.join(parts)} of draws "
        "(measured for the default recipe, benchmarks/SHIFT.md); a larger batch sees smaller shifts"
    )

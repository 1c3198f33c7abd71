"""covidct adapt --curve: a site labels some of its own patients; how many it takes before the model is good there (the
learning curve), and the adapted model.

The curve draws k groups (patients) per class from the site, fits on them and scores every other group of the site,
for several k and several draws, beside baselines on the same draws: the source model as it is (k = 0), and the same
k groups fitted from ImageNet weights alone (does starting from the source model help?). Two strategies, each a
named choice: the head alone on frozen features (a logistic regression: scikit-learn's, with the standardisation
folded into the model's own linear head afterwards, so the adapted model is an ordinary network), and LP-FT (that
regression, then the last stages and the head fine-tuned on their cached inputs: tail.py). Full fine-tuning is not
offered: 25 draws of whole-network training would take about 45 minutes per curve on a CPU (benchmarks/ADAPTATION.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.adaptation.site import Site
from covidct.adaptation.tail import cached_inputs, fine_tune_tail
from covidct.adaptation.tail import outputs as tail_outputs
from covidct.adaptation.tail import scores as tail_scores
from covidct.config import CurvePlan
from covidct.data import ImageDataset
from covidct.errors import DataError, ModelError
from covidct.evaluation.metrics import binary_metrics, roc_auc
from covidct.evaluation.rules import choose_by_rule
from covidct.fileio import write_csv, write_json, write_text
from covidct.fileio.tables import interval_text
from covidct.inference.load import load_trained
from covidct.models import create_model, head_module
from covidct.models.head import fit_head, head_scores, score_of
from covidct.ood.fit import dataset_outputs

log = logging.getLogger("covidct")
DEFAULT_PLAN = CurvePlan()


def draw_groups(labels: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of the images of k groups per class drawn at random; at least one group per class stays out."""
    chosen = []
    for c in (0, 1):
        pool = np.unique(groups[labels == c])
        if len(pool) < k + 1:
            raise DataError(
                f"k = {k} groups per class asked, but class {c} has {len(pool)} group(s): at most "
                f"{len(pool) - 1} can be drawn with one left to score"
            )
        chosen += rng.choice(pool, size=k, replace=False).tolist()
    return np.isin(groups, chosen)


def score_draw(
    name: str, y_fit: np.ndarray, s_fit: np.ndarray | None, y: np.ndarray, s: np.ndarray, groups: np.ndarray
) -> dict[str, Any]:
    """AUC on the scored groups, and sensitivity/specificity at a threshold set on the drawn ones: the model as it
    is, Youden's J on the drawn groups' scores; a refitted head, its own 0.5 (class-balanced; its scores on the
    images it was fitted on separate them perfectly, so Youden's J there is no guide: s_fit None). Per group
    (patient): the mean score of its images."""
    t = choose_by_rule("youden", y_fit, s_fit) if s_fit is not None and len(set(y_fit.tolist())) == 2 else 0.5
    m = binary_metrics(y, s, t)
    ids = np.unique(groups)
    gy = np.array([y[groups == g][0] for g in ids])
    gs = np.array([s[groups == g].mean() for g in ids])
    return {
        "strategy": name,
        "auc": m.auc,
        "sensitivity": m.sensitivity,
        "specificity": m.specificity,
        "threshold": t,
        "group_auc": roc_auc(gy, gs),
        "n_scored": len(y),
        "groups_scored": len(ids),
    }


Adapter = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (fitted mask, scored mask, seed) -> scored scores


def head_adapter(x: np.ndarray, labels: np.ndarray) -> Adapter:
    """The head alone: a logistic regression on frozen features `x`, fitted on the drawn images."""

    def adapt(fit: np.ndarray, rest: np.ndarray, seed: int) -> np.ndarray:
        w, b = fit_head(x[fit], labels[fit])
        return head_scores(w, b, x[rest])

    return adapt


def learning_curve(
    adapters: dict[str, Adapter],
    zero_shot: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    plan: CurvePlan = DEFAULT_PLAN,
) -> list[dict[str, Any]]:
    """One row per (k, draw, strategy). adapters: {"head": head_adapter(...), "lp-ft": ..., "imagenet-head": ...}.
    The same drawn groups for every strategy of a draw; a draw is seeded by (plan.seed, k, draw)."""
    ks, draws, seed = plan.ks, plan.draws, plan.seed
    rows = []
    for k in ks:
        for d in range(draws):
            fit = draw_groups(labels, groups, k, np.random.default_rng([seed, k, d]))
            rest = ~fit
            parts: dict[str, tuple] = {"zero-shot": (zero_shot[fit], zero_shot[rest])}
            for name, adapt in adapters.items():
                parts[name] = (None, adapt(fit, rest, d))
            for name, (s_fit, s_rest) in parts.items():
                row = score_draw(name, labels[fit], s_fit, labels[rest], s_rest, groups[rest])
                rows.append({"k": k, "draw": d, "groups_fitted": 2 * k, "images_fitted": int(fit.sum()), **row})
    return rows


def summarise_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, k): mean over draws with a 95% interval of the mean (mean_interval), and the worst draw."""
    out = []
    for name in dict.fromkeys(r["strategy"] for r in rows):
        for k in dict.fromkeys(r["k"] for r in rows):
            sel = [r for r in rows if r["strategy"] == name and r["k"] == k]
            row: dict[str, Any] = {"strategy": name, "k": k, "draws": len(sel)}
            for key in ("auc", "sensitivity", "specificity", "group_auc"):
                v = np.array([r[key] for r in sel], dtype=float)
                v = v[np.isfinite(v)]
                row[key], row[f"{key}_ci"] = float(v.mean()) if len(v) else math.nan, mean_interval(v)
                row[f"{key}_worst"] = float(v.min()) if len(v) else math.nan
            out.append(row)
    return out


def mean_interval(values: np.ndarray) -> list[float]:
    """A 95% percentile-bootstrap interval of the mean of `values` (scipy.stats.bootstrap): it stays inside the
    values' own range, so an AUC's never passes 1 (a t-interval of bounded values did: [0.770, 1.032]); [nan, nan]
    with fewer than two values, [v, v] when all are equal."""
    from scipy import stats

    if len(values) < 2:
        return [math.nan, math.nan]
    if np.ptp(values) == 0:
        return [float(values[0])] * 2
    ci = stats.bootstrap(
        (values,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile", random_state=0
    ).confidence_interval
    return [float(ci.low), float(ci.high)]


def curve_markdown(summary: list[dict[str, Any]], site: Site, run: str, seconds: float) -> str:
    lines = [
        f"# Learning curve at {site.name}: {run} adapted with k groups per class",
        "",
        f"{len(site.samples)} images in {len(np.unique(site.groups))} groups ({site.group_counts()} per class "
        f"0/1); each k drawn {summary[0]['draws']} times, the rest of the site scored; {seconds:.0f} s.",
        "",
        "| strategy | k | AUC (95% CI of the mean) | worst draw | sensitivity | specificity | per-group AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['strategy']} | {r['k']} | {r['auc']:.3f} {interval_text(r['auc_ci'])} | {r['auc_worst']:.3f} | "
            f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['group_auc']:.3f} |"
        )
    lines += [
        "",
        "zero-shot: the source model as it is (its threshold by Youden's J on the drawn groups); head: a "
        "class-balanced logistic regression on the source model's frozen features, read at 0.5; lp-ft: that "
        "regression, then the network's last two stages and head fine-tuned on the drawn groups (class-balanced, read "
        "at 0.5); imagenet-head, imagenet-lp-ft: the same from ImageNet weights alone.",
    ]
    return "\n".join(lines) + "\n"


def curve_plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    from covidct.fileio.plotting import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["strategy"] for r in summary):
        sel = [r for r in summary if r["strategy"] == name]
        ks = [r["k"] for r in sel]
        ax.plot(ks, [r["auc"] for r in sel], marker="o", label=name)
        ax.fill_between(ks, [r["auc_ci"][0] for r in sel], [r["auc_ci"][1] for r in sel], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("groups (patients) labelled per class")
    ax.set_ylabel("AUC on the site's other groups")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend()
    save_figure(fig, path)


# ---- the features, the curve and the adapted model of a run --------------------------------------------------------


@dataclass
class Start:
    """A network the site adapts from, with what the curve needs of the site's images: the pooled features the head
    reads, the network's own scores, and (for LP-FT) the cached inputs of its last stages."""

    net: Any
    pooled: np.ndarray
    scores: np.ndarray
    maps: Any = None


def start_from(net: Any, site: Site, transform: Any, with_maps: bool) -> Start:
    """One pass over the site's images. With maps, the head's features and the scores come from the cached maps."""
    dataset = ImageDataset(site.samples, transform)
    if with_maps:
        maps = cached_inputs(net, dataset)
        return Start(net, *tail_outputs(net, maps), maps)
    width = head_module(net).in_features
    logits, features = dataset_outputs(net, dataset)
    import torch

    return Start(net, features[:, -width:], score_of(torch.from_numpy(logits)).numpy())


def imagenet_network(architecture: str) -> Any:
    """The architecture with its ImageNet weights alone (the baseline); None, with a note, when those weights cannot
    be had here."""
    try:
        net, _ = create_model(architecture, pretrained=True)
    except ModelError as e:
        log.warning("ImageNet baseline skipped: %s", str(e).splitlines()[0])
        return None
    return net.eval()


def lpft_adapter(start: Start, labels: np.ndarray) -> Adapter:
    """LP-FT on a copy of the network per draw: the linear probe, then the last stages and head fine-tuned (tail.py)."""
    import copy

    import torch

    def adapt(fit: np.ndarray, rest: np.ndarray, seed: int) -> np.ndarray:
        net, maps = copy.deepcopy(start.net), start.maps
        tuned = fine_tune_tail(net, maps[torch.from_numpy(fit)], labels[fit], seed, pooled=start.pooled[fit])
        return tail_scores(tuned, maps[torch.from_numpy(rest)])

    return adapt


def strategy_adapters(prefix: str, start: Start, labels: np.ndarray, strategies: tuple[str, ...]) -> dict[str, Adapter]:
    makers = {"head": lambda: head_adapter(start.pooled, labels), "lp-ft": lambda: lpft_adapter(start, labels)}
    return {f"{prefix}{name}": makers[name]() for name in strategies}


def run_curve(run_dir: Path, site: Site, out: Path, plan: CurvePlan) -> list[dict]:
    """curve.csv, curve.md, curve.png (and curve.json) in `out`; returns the summary rows."""
    ks, strategies, imagenet_strategies = plan.ks, plan.strategies, plan.imagenet_strategies
    for k in ks:  # refused before any work, naming the counts
        draw_groups(site.labels, site.groups, k, np.random.default_rng(0))
    start = time.perf_counter()
    model = load_trained(run_dir, checkpoint="best")
    with_maps = "lp-ft" in strategies
    source = start_from(model.module, site, model.transform, with_maps)
    adapters = strategy_adapters("", source, site.labels, strategies)
    imagenet = imagenet_network(model.architecture)
    if imagenet is not None and imagenet_strategies:
        baseline = start_from(imagenet, site, model.transform, "lp-ft" in imagenet_strategies)
        adapters |= strategy_adapters("imagenet-", baseline, site.labels, imagenet_strategies)
    rows = learning_curve(adapters, source.scores, site.labels, site.groups, plan)
    summary = summarise_curve(rows)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curve_draws.csv", rows)
    flat = [
        {k: v for k, v in r.items() if not k.endswith("_ci")} | {"auc_low": r["auc_ci"][0], "auc_high": r["auc_ci"][1]}
        for r in summary
    ]
    write_csv(out / "curve.csv", flat)
    record = {
        "run": str(run_dir),
        "site": site.spec,
        "ks": list(ks),
        "draws": plan.draws,
        "seed": plan.seed,
        "strategies": list(strategies),
        "imagenet_strategies": list(imagenet_strategies),
    }
    write_json(out / "curve.json", {**record, "seconds": round(seconds, 1), "summary": summary})
    write_text(out / "curve.md", curve_markdown(summary, site, str(run_dir), seconds))
    curve_plot(summary, out / "curve.png")
    return summary

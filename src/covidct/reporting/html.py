"""One self-contained HTML report per run (images embedded as data URIs; no network needed to view it)."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from covidct import DISCLAIMER
from covidct.data import load_rgb
from covidct.data.audit.figures import sample_grid_figure
from covidct.data.audit.report import audit_dataset, write_audit
from covidct.data.audit.samples import pick_samples
from covidct.errors import ModelError
from covidct.evaluation.evaluate import evaluate_run
from covidct.evaluation.score_drivers import driver_warnings, drivers_text
from covidct.evaluation.writing import misclassified
from covidct.fileio import write_text
from covidct.fileio.plotting import figure_png
from covidct.fileio.tables import interval_text, number_text
from covidct.reporting.study import STUDY_FIGURES, WHY_BACKBONE
from covidct.runs import RunDir

FIGURES = ("training_curves", "confusion_matrix", "roc_curve", "pr_curve", "reliability", "misclassified_scores")
MAX_GALLERY = 24


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def thumbnail_uri(path: str | Path, size: int = 150) -> str:
    img = load_rgb(path)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_uri(buf.getvalue())


WHOLE_SLICE_NOTE = (
    "whole 512 x 512 scanner slices or DICOM series from a hospital whose images were not in training, unless a "
    "row above says so; real-patient CT from elsewhere differs (scanner, window, framing, population): validate "
    "there before trusting any figure"
)


def _row(name: str, kind: str, m: dict[str, Any], auc_ci: Any) -> dict[str, Any]:
    keys = ("n", "accuracy", "sensitivity", "specificity", "auc")
    ood = m.get("ood")  # the out-of-distribution check's share; per-group rows have none of their own
    flagged = "-" if "ood" not in m else f"{ood['fraction_flagged']:.0%}" if ood else "no detector"
    return {
        "name": name,
        "kind": kind,
        **{k: m.get(k) for k in keys},
        "auc_ci": auc_ci,
        "ood": flagged,
        "shift": shift_cell(m.get("shift")),
    }


def shift_cell(record: dict[str, Any] | None) -> str:
    """The batch shift test of a set (covidct.ood.shift), in a few words; "-" where it was not run."""
    if not record or not record.get("tested"):
        return "-"
    verdict = "differs from validation" if record["shifted"] else "not told apart"
    return f"{verdict} (p = {record['p_value']:.2g}, n = {record['n']})"


def validation_summary(run: RunDir, data: Any) -> dict[str, Any]:
    """Every evaluation of the run, split or external set, one row each, and what the model was not validated on."""
    trained = data.sources() or ["(one folder)"]
    rows = []
    for name, m in run.evaluations().items():
        ext = m.get("external")
        kind = "split of the training sources"
        if ext:
            seen = ext.get("images_seen_in_training")
            kind = "external set" + (f" ({seen} images seen in training)" if seen else "")
        rows.append(_row(name, kind, m, m.get("ci95", {}).get("auc", {}).get("delong")))
        if m.get("score_drivers"):  # external sets: the statistic the scores follow most there
            rows[-1]["follows"] = "; ".join([drivers_text(m["score_drivers"]), *driver_warnings(m["score_drivers"])])
        if m.get("per_group"):  # evaluate --per-group: each patient (group) scored as one
            g = m["per_group"]
            rows.append(
                _row(
                    f"{name}: per group",
                    f"{g['groups']} groups, {g['aggregation']} of slice scores",
                    g,
                    g.get("auc_delong"),
                )
            )
        per_source = m.get("per_source") or {}
        if len(per_source) > 1:
            rows += [
                _row(f"{name}: {src}", "one source of it", per, per.get("auc_delong"))
                for src, per in per_source.items()
            ]
    external = [r["name"] for r in rows if r["kind"].startswith("external")]
    statement = (
        f"Validated on sources it never trained on: {', '.join(external)}."
        if external
        else "Validated only on held-out splits of its own training sources: no external validation yet "
        "(covidct evaluate RUN --on SOURCE|FOLDER|CSV adds one)."
    )
    return {
        "trained_on": trained,
        "rows": rows,
        "statement": statement,
        "not_validated": WHOLE_SLICE_NOTE,
        "acquisitions": acquisitions_seen(run),
    }


def acquisitions_seen(run: RunDir) -> str:
    """What the run's detector says of the acquisitions its training images held (covidct.ood.acquisition)."""
    from covidct.ood.storage import load_detector

    try:
        detector = load_detector(run.ood_dir)
        if detector is None:
            return "not recorded (the run has no detector: covidct ood fit RUN adds one)"
        detector.check_current(str(run.ood_dir))
    except ModelError as e:
        return f"unknown: {e}"
    return detector.acquisitions.summary()


def build_report(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.html (evaluating the run on `split` first if that was not done)."""
    run = RunDir.at(run_dir)
    eval_dir = run.eval_dir(split)
    if run.evaluation(split) is None:
        evaluate_run(run.path, split, data_dir=data_dir)
    metrics = run.evaluation(split) or {}
    if "operating_points" not in metrics:
        raise ModelError(f"{eval_dir / 'metrics.json'} predates intervals; run covidct evaluate {run.path} again")
    config = run.raw_config()
    summary = run.summary()
    data = run.data(data_dir)
    audit = audit_dataset(data)
    write_audit(audit, run.audit_dir)
    wrong = misclassified(eval_dir)
    gallery = misclassified_gallery(wrong, metrics["class_names"], metrics["threshold"])
    validation = validation_summary(run, data)
    study = STUDY_FIGURES if split == "test" and data.source.startswith("COVID-CT official split") else ()
    env = Environment(loader=PackageLoader("covidct", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        run_name=run.name,
        model=metrics["model"],
        split=split,
        written=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        disclaimer=DISCLAIMER,
        config=config,
        config_yaml=yaml.safe_dump(config, sort_keys=False),
        summary=summary,
        env=summary.get("environment", {}),
        class_names=metrics["class_names"],
        audit=audit_section(audit),
        validation=validation,
        answer=answer_first(metrics, data, validation, study),
        study=study,
        why_backbone=WHY_BACKBONE,
        same_as_default=same_as_default(metrics),
        metrics=metrics,
        figures=report_figures(eval_dir, data),
        misclassified=gallery,
        misclassified_more=max(0, len(wrong) - len(gallery)),
        preprocessing=("made grey, " if config.get("grayscale") else "")
        + "resized to a square and normalised with the backbone's mean and std",
        train_counts=", ".join(f"{k} {v}" for k, v in data.counts()["train"].items()) + " training images",
        fmt=number_text,
        ci=interval_text,
    )
    return write_text(run.report_path, html)


def answer_first(metrics: dict[str, Any], data: Any, validation: dict[str, Any], study: Any) -> str:
    """The report's first sentence, in plain words: what was trained on what, how good it is, where it was flagged."""
    figures = ", ".join(
        f"{k} {number_text(metrics[k])} {interval_text(metrics.get('ci95', {}).get(k, {}).get(kind))}".strip()
        for k, kind in (("accuracy", "wilson"), ("sensitivity", "wilson"), ("specificity", "wilson"), ("auc", "delong"))
    )
    n_train = sum(data.counts()["train"].values())
    text = (
        f"{metrics['model']} trained on {', '.join(validation['trained_on'])} ({n_train} training images) scores "
        f"{figures.replace('auc', 'ROC-AUC')} on the {metrics['n']} images of the {metrics.get('split', 'test')} split"
    )
    if study:
        best = study[0]
        name = best["model"].removeprefix("study: ")
        text += f" (the study's {name}: accuracy {best['accuracy']:.3f}, ROC-AUC {best['auc']:.3f})"
    ood = metrics.get("ood")
    text += "." if not ood else f"; the out-of-distribution check flagged {ood['fraction_flagged']:.0%} of them."
    external = [r for r in validation["rows"] if r["kind"].startswith("external")]
    if external:
        text += (
            " Never trained on: "
            + "; ".join(
                f"{r['name']} ROC-AUC {number_text(r['auc'])}, {r['ood']} flagged"
                + ("" if r["shift"] == "-" else f", as a batch {r['shift']}")
                for r in external
            )
            + "."
        )
    else:
        text += " Not yet validated on any source it was not trained on."
    return text


def same_as_default(metrics: dict[str, Any]) -> list[str]:
    """The operating points whose threshold is the model's own (the default recipe chooses it by Youden's J on
    validation, so its "youden" row repeats "default"): the report says why two rows are the same."""
    points = metrics.get("operating_points") or []
    default = next((p["threshold"] for p in points if p["name"] == "default"), None)
    return [
        p["name"]
        for p in points
        if p["name"] != "default" and default is not None and abs(p["threshold"] - default) < 1e-12
    ]


def audit_section(audit: Any) -> dict[str, Any]:
    """The audit as the report shows it: counts, summary, warnings, the near/exact duplicate pairs across splits."""
    cross = [
        {**p, "a_name": Path(p["a"]).name, "b_name": Path(p["b"]).name}
        for p in audit.near_duplicates + audit.exact_duplicates
        if p["cross_split"]
    ]
    return {
        "counts": audit.counts,
        "summary": audit.summary(),
        "warnings": audit.warnings,
        "cross_pairs": cross,
        "shortcut": audit.shortcut,
    }


def report_figures(eval_dir: Path, data: Any) -> dict[str, str]:
    """The evaluation's figures and a grid of sample images, as data URIs (the report is one file)."""
    figures = {
        name: data_uri((eval_dir / f"{name}.png").read_bytes())
        for name in FIGURES
        if (eval_dir / f"{name}.png").is_file()
    }
    figures["samples"] = data_uri(figure_png(sample_grid_figure(pick_samples(data, 5, seed=0))))
    return figures


def misclassified_gallery(wrong: list[dict[str, Any]], class_names: list[str], threshold: float) -> list[dict]:
    """The misclassified images furthest from the threshold first (at most MAX_GALLERY), as thumbnails, each with
    its out-of-distribution flag (misclassified's `flagged`)."""
    worst = sorted(wrong, key=lambda r: abs(float(r["score"]) - threshold), reverse=True)[:MAX_GALLERY]
    return [
        {
            "src": thumbnail_uri(r["path"]),
            "name": Path(r["path"]).name,
            "score": float(r["score"]),
            "truth": class_names[int(r["label"])],
            "flagged": r["flagged"],
        }
        for r in worst
    ]

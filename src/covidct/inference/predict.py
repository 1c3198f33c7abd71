"""`covidct predict`: score PNG/JPEG images, DICOM files, folders of DICOM as they come from a PACS or a CD
(studies and series by UID, DICOMDIR), and NIfTI volumes with an exported model or a run folder. Writes one CSV row
per image or slice, a summary row per series or volume and per study, and a JSON of the patient-level results.

Volumes are scored slice by slice, streamed (one batch of slices in memory at a time). Only the slices that show
lung (data/lungmask.py: air inside the body, from HU) enter the volume score; the CSV says which slices counted
and their lung fraction. The volume score is an aggregation of the counted slices' scores, a named option
(AGGREGATIONS; default top10_mean: the mean of the top 10%, a few clearly abnormal slices make a volume positive,
as a radiologist reads one). A study's score is its lung reconstruction's (a series whose description or kernel
names a lung/sharp reconstruction), else its series with the most lung slices: STUDY_RULE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.data.images import IMAGE_SUFFIXES
from covidct.data.inputs import STUDIES, Reader
from covidct.data.lungmask import lung_fraction, lung_mask
from covidct.data.medical import LUNG_WINDOW, grey_image
from covidct.errors import ConfigError, DataError
from covidct.fileio import write_csv
from covidct.inference.explain import dicom_top_slices, save_top_cams
from covidct.inference.loaded import LoadedModel
from covidct.inference.reading import BATCH, input_runs, prepared_images
from covidct.ood.acquisition import of_file
from covidct.verdict import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    OOD_RULE,
    STUDY_RULE,
    ImageVerdict,
    checked_aggregation,
    flag_cell,
    label_of,
    ood_reason,
    study_ood,
    study_series,
    summarise_volume,
)

INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm", ".dicom", ".nii", ".gz")


def checked_outputs(out: str | Path, inputs: list[Path]) -> tuple[Path, Path]:
    """(CSV, JSON) that predict writes for `--out`, checked before anything is scored: never a folder, never an
    input's path (a scan overwritten by a CSV is lost), and never a name whose JSON twin is itself (--out p.json)."""
    csv_path = Path(out)
    json_path = csv_path.with_suffix(".json")
    if csv_path.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name for the CSV, e.g. --out {csv_path / 'p.csv'}")
    if json_path == csv_path:
        raise ConfigError(
            f"--out {out}: the CSV and the JSON beside it (same name, .json) would be one file; give a .csv name"
        )
    if csv_path.suffix.lower() in INPUT_SUFFIXES or csv_path.name.lower().endswith(".nii.gz"):
        raise ConfigError(f"--out {out} names an image or a scan, not a CSV; give a .csv name")
    given = {p.resolve() for p in inputs}
    for path in (csv_path, json_path):
        if path.resolve() in given:
            raise ConfigError(f"--out {out} would overwrite the input {path}; write the predictions elsewhere")
    return csv_path, json_path


class VolumeScorer:
    """Scores a stream of (key, HU or None, grey) slices in batches; keeps only numbers per slice. `unseen`: why
    the series' acquisition is outside what the model was trained on (None: it is not, or cannot be told)."""

    def __init__(self, model: LoadedModel, unseen: str | None = None) -> None:
        self.model, self.unseen = model, unseen

    def run(self, slices: Iterator[tuple[Any, np.ndarray | None, np.ndarray | None, str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        batch: list[tuple[dict[str, Any], Image.Image]] = []
        for key, hu, grey, problem in slices:
            entry: dict[str, Any] = {"key": key, "problem": problem}
            if grey is None:
                out.append(entry)
                continue
            if hu is not None:
                lung, body = lung_mask(hu)
                entry["lung_fraction"] = round(lung_fraction(lung, body), 4)
            batch.append((entry, grey_image(grey)))
            out.append(entry)
            if len(batch) == BATCH:
                self._score(batch)
        self._score(batch)
        return out

    def _score(self, batch: list[tuple[dict[str, Any], Image.Image]]) -> None:
        if batch:
            scores, ood = self.model.score_images([img for _, img in batch])
            flags = self.model.ood_flags(ood)
            for k, ((entry, _), s) in enumerate(zip(batch, scores)):
                entry["score"] = float(s)
                if ood is not None and flags is not None:
                    entry["ood_score"] = float(ood[k])
                    entry["in_distribution"], entry["ood_reason"] = ood_reason(bool(flags[k]), self.unseen)
            batch.clear()


@dataclass(frozen=True)
class PredictOptions:
    """What `covidct predict` is asked besides its inputs. threshold: None for the model's operating point."""

    threshold: float | None = None
    window: tuple[float, float] = LUNG_WINDOW
    cam_dir: Path | None = None
    aggregation: str = DEFAULT_AGGREGATION


def predict_inputs(
    model: LoadedModel,
    paths: list[Path],
    options: PredictOptions | None = None,
    report: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per image or slice, one summary row per volume or series (slice = 'volume') and per DICOM study
    (slice = 'study'). `report`, when given, is filled with the patient-level results (the JSON). An input that
    cannot be read is skipped and listed in report["skipped"] with the reason; DataError when nothing could be
    scored."""
    options = options or PredictOptions()
    checked_aggregation(options.aggregation)
    run = Prediction(model, options, model.threshold if options.threshold is None else float(options.threshold))
    if report is not None:
        run.report = report
    run.start_report()
    with model.collecting() as outputs:  # every scored image's features: the batch shift test's input
        for item, reader in input_runs(paths):
            run.score(item, reader)
    run.report["shift"] = model.batch_shift(outputs)
    if not any(isinstance(r["score"], float) for r in run.rows):
        raise DataError("nothing could be scored: " + "; ".join(run.report["skipped"][:3]))
    return run.rows


@dataclass
class Prediction:
    """One `covidct predict`: the model and the options, and the rows and the report as they fill."""

    model: LoadedModel
    options: PredictOptions
    threshold: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def start_report(self) -> None:
        self.report.update(
            aggregation=AGGREGATIONS[self.options.aggregation][1],
            study_rule=STUDY_RULE,
            threshold=self.threshold,
            studies=[],
            volumes=[],
            images=[],
            skipped=[],
            ood_check=ood_check(self.model),
        )

    def label(self, score: float) -> str:
        return label_of(score, self.threshold, self.model.class_names)

    def score(self, item: Path | list[Path], reader: Reader | None) -> None:
        """A run of image files, or a DICOM folder or a NIfTI volume with the reader that takes it; one that cannot
        be read is skipped by name."""
        try:
            if isinstance(item, list):  # a run of SLICE inputs, scored in batches
                self.images(item)
            elif reader is not None and reader.unit == STUDIES:
                self.folder(item, reader)
            elif reader is not None:
                self.volume(item, reader)
        except DataError as e:
            self.report["skipped"].append(str(e))

    def images(self, paths: list[Path]) -> None:
        """Image files and DICOM slices, in batches: a row each, an entry each in the report, heat maps under
        --cam."""
        for batch in prepared_images(self.model, paths, self.options.window, self.options.cam_dir is not None):
            self.report["skipped"] += batch.skipped
            if batch.arguments is None:
                continue
            x, check, statistics = batch.arguments
            scores, ood = self.model.judged(batch.forward or self.model.forward(x, check), statistics)
            images = batch.images
            for k, (path, unseen) in enumerate(zip(batch.paths, batch.unseen)):
                s = float(scores[k])
                verdict = self.model.verdict(s, None if ood is None else float(ood[k]), unseen, self.threshold)
                flag = ood_columns(verdict)
                row = {"path": str(path), "series": "", "slice": "", "score": round(s, 6), "label": verdict.label}
                self.rows.append({**row, "threshold": self.threshold, "lung_fraction": "", "counted": "", **flag})
                self.report["images"].append({"path": str(path), "score": s, "label": verdict.label, **flag})
                if self.options.cam_dir is not None:
                    from covidct.inference.explain import save_cams

                    save_cams(self.model, images[k : k + 1], path, self.options.cam_dir, False)

    def volume(self, path: Path, reader: Reader) -> None:
        """A NIfTI volume: a row per slice, its summary row, its entry in the report, its top slices' heat maps."""
        unseen = self.model.unseen_acquisition(of_file(path))
        slices = enumerate(reader.read(path, self.options.window))
        entries = VolumeScorer(self.model, unseen).run((k, hu, g, "") for k, (hu, g) in slices)
        for k, e in enumerate(entries):
            e["index"] = k
        summary = summarise_volume(entries, self.options.aggregation)
        self.slice_rows(str(path), "", entries)
        self.rows.append(self.summary_row(str(path), "", "volume", summary))
        self.report["volumes"].append({"path": str(path), **summary, "label": self.label(summary["score"])})
        if self.options.cam_dir is not None:
            greys = [g for _, g in reader.read(path, self.options.window)]
            tops = [grey_image(greys[t["slice"]]) for t in summary["top_slices"]]
            save_top_cams(self.model, path, tops, self.options.cam_dir)

    def folder(self, folder: Path, reader: Reader) -> None:
        """A folder of DICOM files: each study's series scored as volumes, the study's result from one of them
        (STUDY_RULE), and the study's own shift test."""
        scan = reader.read(folder)
        self.report["skipped"] += scan.skipped
        studies = len(self.report["studies"])
        for study_uid, series_list in scan.studies().items():
            with self.model.collecting() as study_outputs:  # the study's own shift test (the run's gets them too)
                results = self.series_of(folder, series_list)
            if results:
                self.study(folder, study_uid, results, self.model.batch_shift(study_outputs))
        if len(self.report["studies"]) == studies:
            self.report["skipped"].append(f"{folder}: no DICOM series in it could be scored")

    def study(self, folder: Path, study_uid: str, results: list, shift: dict[str, Any]) -> None:
        chosen, summary = study_series(results, lambda series: series.looks_like_lung_reconstruction())
        score = summary["score"]
        self.rows.append(self.summary_row(str(folder), chosen.label, "study", summary))
        series = [
            {"series_uid": s.series_uid, "description": s.description, "kernel": s.kernel}
            | {"label": self.label(m["score"]), "notes": s.notes, **m}
            for s, m in results
        ]
        about = {"folder": str(folder), "study_uid": study_uid, "patient": chosen.patient, "score": score}
        self.report["studies"].append(
            {**about, "label": self.label(score), "from_series": chosen.label, **study_ood(summary)}
            | {"series": series, "shift": shift}
        )

    def series_of(self, folder: Path, series_list: list) -> list:
        """A study's series, each scored as a volume: its rows, and (series, summary) of those that could be
        scored."""
        from covidct.data.dicom_study import iter_series

        results = []
        for s in series_list:
            unseen = self.model.unseen_acquisition(of_file(s.slices[0].path)) if s.slices else None
            entries = VolumeScorer(self.model, unseen).run(iter_series(s, self.options.window))
            for k, e in enumerate(entries):
                e["index"], e["file"] = k, str(e["key"].path)
            try:
                summary = summarise_volume(entries, self.options.aggregation)
            except DataError as e:
                self.report["skipped"].append(f"series {s.label} of {folder}: {e}")
                continue
            self.slice_rows(str(folder), s.label, entries)
            self.rows.append(self.summary_row(str(folder), s.label, "volume", summary))
            for top in summary["top_slices"]:
                top["file"] = entries[top["slice"]]["file"]
            results.append((s, summary))
            if self.options.cam_dir is not None:
                tops = dicom_top_slices(summary["top_slices"], self.options.window)
                save_top_cams(self.model, folder, tops, self.options.cam_dir, s.label)
        return results

    def slice_rows(self, path: str, series: str, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            s = e.get("score")
            self.rows.append(
                {
                    "path": path,
                    "series": series,
                    "slice": e["index"],
                    "score": round(s, 6) if s is not None else "",
                    "label": self.label(s) if s is not None else f"unreadable: {e['problem']}",
                    "threshold": self.threshold,
                    "lung_fraction": e.get("lung_fraction", ""),
                    "counted": int(bool(e.get("counted"))),
                    "ood_score": round(e["ood_score"], 4) if "ood_score" in e else "",
                    "in_distribution": e.get("in_distribution"),
                    "ood_fraction": "",
                    "ood_reason": e.get("ood_reason", ""),
                }
            )

    def summary_row(self, path: str, series: str, kind: str, summary: dict[str, Any]) -> dict[str, Any]:
        return {
            "path": path,
            "series": series,
            "slice": kind,
            "score": round(summary["score"], 6),
            "label": self.label(summary["score"]),
            "threshold": self.threshold,
            "lung_fraction": "",
            "counted": summary.get("slices_counted", ""),
            "ood_score": "",
            "in_distribution": summary.get("in_distribution"),
            "ood_fraction": summary.get("ood_fraction", ""),
            "ood_reason": summary.get("ood_reason", ""),
        }


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """predict's CSV: its rows, the out-of-distribution flag rendered as a cell (verdict.flag_cell)."""
    write_csv(path, [{**r, "in_distribution": flag_cell(r.get("in_distribution"))} for r in rows])
    return path


def ood_check(model: LoadedModel) -> str:
    """The report's rule of the check, or 'unavailable' without a detector."""
    if model.ood is None:
        return "unavailable"
    shape = " and image files also by their shape" if model.ood.acquisitions.aspect else ""
    return f"{OOD_RULE}; DICOM and NIfTI inputs also by their acquisition{shape}: {model.ood.acquisitions.summary()}"


def ood_columns(v: ImageVerdict) -> dict[str, Any]:
    """The columns of one image's out-of-distribution verdict (blank, the flag None, without a detector)."""
    if v.ood_score is None:
        return {"ood_score": "", "in_distribution": None, "ood_fraction": "", "ood_reason": ""}
    return {
        "ood_score": round(v.ood_score, 4),
        "in_distribution": v.in_distribution,
        "ood_fraction": "",
        "ood_reason": v.ood_reason,
    }

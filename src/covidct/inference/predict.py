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

import glob
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from covidct.data import load_rgb
from covidct.data.images import IMAGE_SUFFIXES, check_scoring_size
from covidct.data.lungmask import lung_fraction, lung_mask
from covidct.data.medical import LUNG_WINDOW, apply_window, grey_image, is_dicom, is_nifti, read_dicom
from covidct.errors import DataError
from covidct.inference.load import LoadedModel
from covidct.ood.acquisition import of_file
from covidct.verdict import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    OOD_RULE,
    STUDY_RULE,
    ImageVerdict,
    checked_aggregation,
    label_of,
    ood_reason,
    study_ood,
    study_series,
    summarise_volume,
)

BATCH = 16  # images per forward pass: 16 to 32 score fastest on 2 cores, in both backends (SPEED.md)
PREPARING_THREADS = 1  # decoding and preprocessing, beside the scoring threads


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders and globs, in a stable order. A folder holding DICOM files is kept whole (its studies and
    series are found by UID); images and NIfTI files in other folders are listed one by one."""
    found: list[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))] or [Path(item)]
        for path in matches:
            if not path.exists():
                raise DataError(f"input {item} does not exist")
            found += _expand_folder(path) if path.is_dir() else [path]
    if not found:
        raise DataError(f"no images, DICOM or NIfTI files found in {inputs}")
    return found


def _expand_folder(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if (folder / "DICOMDIR").is_file() or any(
        is_dicom(p) for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and not is_nifti(p)
    ):
        others = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p)]
        return [folder, *others]  # DICOM found by UID inside; images and volumes beside them one by one
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p)]


def read_input(path: Path, window: tuple[float, float] = LUNG_WINDOW) -> tuple[list[Image.Image], bool]:
    """(images, is_volume) of a 2-D input (image or DICOM slice) or a NIfTI volume."""
    if is_nifti(path):
        return [grey_image(g) for _, g in _nifti_slices(path, window)], True
    image = read_dicom(path, window) if is_dicom(path) else load_rgb(path)
    check_scoring_size(image.size, f"{'DICOM' if is_dicom(path) else 'image'} file {path}")
    return [image], False


def _nifti_slices(path: Path, window: tuple[float, float]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HU, grey) of each axial slice of a NIfTI volume (values taken as HU)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
    except FileNotFoundError:
        raise DataError(f"NIfTI file {path} does not exist") from None
    except Exception as e:
        raise DataError(f"file {path} is not a readable NIfTI volume ({type(e).__name__}: {e})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"NIfTI file {path}: expected a 3-D volume, got shape {img.shape}")
    data = img.dataobj
    for k in range(shape[2]):  # NIfTI stores x first: transpose so each slice is rows x columns as displayed
        hu = np.asarray(data[:, :, k] if len(img.shape) == 3 else data[:, :, k, 0], dtype=np.float32).T
        yield hu, apply_window(hu, *window)


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
            scores, ood = self.model.scores_with_ood([img for _, img in batch])
            flags = self.model.ood_flags(ood)
            for k, ((entry, _), s) in enumerate(zip(batch, scores)):
                entry["score"] = float(s)
                if ood is not None and flags is not None:
                    entry["ood_score"] = float(ood[k])
                    entry["in_distribution"], entry["ood_reason"] = ood_reason(bool(flags[k]), self.unseen)
            batch.clear()


def predict_inputs(
    model: LoadedModel,
    paths: list[Path],
    threshold: float | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
    cam_dir: Path | None = None,
    aggregation: str = DEFAULT_AGGREGATION,
    report: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per image or slice, one summary row per volume or series (slice = 'volume') and per DICOM study
    (slice = 'study'). `report`, when given, is filled with the patient-level results (the JSON)."""
    checked_aggregation(aggregation)
    t = model.threshold if threshold is None else float(threshold)
    names = model.class_names

    def label(s: float) -> str:
        return label_of(s, t, names)

    rows: list[dict[str, Any]] = []
    report = report if report is not None else {}
    report.update(
        aggregation=AGGREGATIONS[aggregation][1],
        study_rule=STUDY_RULE,
        threshold=t,
        studies=[],
        volumes=[],
        images=[],
        skipped=[],
        ood_check=ood_check(model),
    )
    with model.collecting() as outputs:  # every scored image's features: the batch shift test's input
        for path in _image_runs(paths):
            if isinstance(path, list):
                _predict_images(model, path, window, t, label, rows, report, cam_dir)
            elif path.is_dir():
                _predict_folder(model, path, window, aggregation, t, label, rows, report, cam_dir)
            else:
                _predict_volume(model, path, window, aggregation, label, rows, report, cam_dir)
    report["shift"] = model.batch_shift(outputs)
    if not any(isinstance(r["score"], float) for r in rows):
        raise DataError("nothing could be scored: " + "; ".join(report["skipped"][:3]))
    return rows


def _predict_volume(model, path, window, aggregation, label, rows, report, cam_dir) -> None:
    """A NIfTI volume: a row per slice, its summary row, its entry in the report, its top slices' heat maps."""
    t = report["threshold"]
    unseen = model.unseen_acquisition(of_file(path))
    slices = enumerate(_nifti_slices(path, window))
    entries = VolumeScorer(model, unseen).run((k, hu, g, "") for k, (hu, g) in slices)
    for k, e in enumerate(entries):
        e["index"] = k
    summary = summarise_volume(entries, aggregation)
    _slice_rows(rows, str(path), "", entries, label, t)
    rows.append(_summary_row(str(path), "", "volume", summary["score"], label, t, summary))
    report["volumes"].append({"path": str(path), **summary, "label": label(summary["score"])})
    if cam_dir is not None:
        _save_top_cams(model, path, [g for _, g in _nifti_slices(path, window)], summary, cam_dir)


def ood_check(model: LoadedModel) -> str:
    """The report's rule of the check, or 'unavailable' without a detector."""
    if model.ood is None:
        return "unavailable"
    if model.ood.acquisitions is None:
        return OOD_RULE + "; the acquisition check is unavailable (a detector fitted before it: covidct ood fit RUN)"
    shape = " and image files also by their shape" if model.ood.acquisitions.aspect else ""
    return f"{OOD_RULE}; DICOM and NIfTI inputs also by their acquisition{shape}: {model.ood.acquisitions.summary()}"


def ood_columns(v: ImageVerdict) -> dict[str, Any]:
    """The CSV/JSON columns of one image's out-of-distribution verdict (blank without a detector)."""
    if v.ood_score is None:
        return {"ood_score": "", "in_distribution": "", "ood_fraction": "", "ood_reason": ""}
    return {
        "ood_score": round(v.ood_score, 4),
        "in_distribution": v.in_distribution,
        "ood_fraction": "",
        "ood_reason": v.ood_reason,
    }


def _slice_rows(rows: list, path: str, series: str, entries: list, label: Callable, t: float) -> None:
    for e in entries:
        s = e.get("score")
        rows.append(
            {
                "path": path,
                "series": series,
                "slice": e["index"],
                "score": round(s, 6) if s is not None else "",
                "label": label(s) if s is not None else f"unreadable: {e['problem']}",
                "threshold": t,
                "lung_fraction": e.get("lung_fraction", ""),
                "counted": int(bool(e.get("counted"))),
                "ood_score": round(e["ood_score"], 4) if "ood_score" in e else "",
                "in_distribution": e.get("in_distribution", ""),
                "ood_fraction": "",
                "ood_reason": e.get("ood_reason", ""),
            }
        )


def _summary_row(path: str, series: str, kind: str, score: float, label: Callable, t: float, summary: dict) -> dict:
    return {
        "path": path,
        "series": series,
        "slice": kind,
        "score": round(score, 6),
        "label": label(score),
        "threshold": t,
        "lung_fraction": "",
        "counted": summary.get("slices_counted", ""),
        "ood_score": "",
        "in_distribution": summary.get("in_distribution", ""),
        "ood_fraction": summary.get("ood_fraction", ""),
        "ood_reason": summary.get("ood_reason", ""),
    }


def _image_runs(paths: list[Path]) -> Iterator[Path | list[Path]]:
    """The inputs in order, each run of consecutive image files (PNG, JPEG, a DICOM slice) as one list: they are
    scored in batches; folders and NIfTI volumes one by one."""
    run: list[Path] = []
    for path in paths:
        if path.is_dir() or is_nifti(path):
            if run:
                yield run
            run = []
            yield path
        else:
            run.append(path)
    if run:
        yield run


def prepared_images(
    model: LoadedModel, paths: list[Path], window: tuple[float, float]
) -> Iterator[tuple[list[Path], list[Image.Image], tuple | None, list[str]]]:
    """(paths, images, score_batch's arguments, why the others were skipped) per batch of BATCH image files, read and
    preprocessed by a pool of worker threads a batch ahead of the one being scored: PIL, torchvision and numpy
    release the GIL while they work, so decoding overlaps the network (SPEED.md). A file that cannot be read is
    skipped with its reason (a DataError names the file): the rest of the folder is scored, as a DICOM folder's
    unreadable slices are; the arguments are None when none of the batch could be read."""
    from concurrent.futures import ThreadPoolExecutor

    def prepare(path: Path) -> tuple[Image.Image, tuple] | str:
        try:
            images, _ = read_input(path, window)
        except DataError as e:
            return str(e)
        return images[0], model.prepared(images)

    def batch(chunk: list[Path]) -> list:
        return [pool.submit(prepare, path) for path in chunk]

    chunks = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    with ThreadPoolExecutor(PREPARING_THREADS) as pool:
        pending = batch(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            done = [f.result() for f in pending]
            pending = batch(chunks[k + 1]) if k + 1 < len(chunks) else []
            read = [(path, d) for path, d in zip(chunk, done) if not isinstance(d, str)]
            skipped = [d for d in done if isinstance(d, str)]
            yield [path for path, _ in read], [d[0] for _, d in read], stacked([d[1] for _, d in read]), skipped


def stacked(prepared: list[tuple]) -> tuple | None:
    """score_batch's arguments of several images' LoadedModel.prepared, as one batch (None for none)."""
    if not prepared:
        return None
    statistics = {name: np.concatenate([p[2][name] for p in prepared]) for name in prepared[0][2]}
    # numpy's copy, not torch.cat: torch's would start its thread pool against the network's (8x slower)
    batch_x = torch.from_numpy(np.concatenate([p[0].numpy() for p in prepared]))
    return batch_x, prepared[0][1], statistics


def _predict_images(model, paths, window, t, label, rows, report, cam_dir) -> None:
    """Image files and DICOM slices, in batches: a row each, an entry each in the report, heat maps under --cam."""
    for chunk, images, prepared, skipped in prepared_images(model, paths, window):
        report["skipped"] += skipped
        if prepared is None:
            continue
        scores, ood = model.score_batch(*prepared)
        for k, path in enumerate(chunk):
            s = float(scores[k])
            unseen = model.unseen_acquisition(of_file(path))
            flag = ood_columns(model.verdict(s, None if ood is None else float(ood[k]), unseen, t))
            rows.append(
                {
                    "path": str(path),
                    "series": "",
                    "slice": "",
                    "score": round(s, 6),
                    "label": label(s),
                    "threshold": t,
                    "lung_fraction": "",
                    "counted": "",
                    **flag,
                }
            )
            report["images"].append({"path": str(path), "score": s, "label": label(s), **flag})
            if cam_dir is not None:
                from covidct.inference.explain import save_cams

                save_cams(model, images[k : k + 1], path, cam_dir, False)


def _predict_folder(model, folder, window, aggregation, t, label, rows, report, cam_dir) -> None:
    from covidct.data.dicom_study import scan_folder

    scan = scan_folder(folder)
    report["skipped"] += scan.skipped
    for study_uid, series_list in scan.studies().items():
        with model.collecting() as study_outputs:  # the study's own shift test (the run's gets them too)
            results = _predict_series_of(
                model, folder, series_list, window, aggregation, t, label, rows, report, cam_dir
            )
        if not results:
            continue
        chosen = study_series(results, lambda series: series.looks_like_lung_reconstruction())
        score = chosen[1]["score"]
        rows.append(_summary_row(str(folder), chosen[0].label, "study", score, label, t, chosen[1]))
        report["studies"].append(
            {
                "folder": str(folder),
                "study_uid": study_uid,
                "patient": chosen[0].patient,
                "score": score,
                "label": label(score),
                "from_series": chosen[0].label,
                **study_ood(chosen[1]),
                "series": [
                    {
                        "series_uid": s.series_uid,
                        "description": s.description,
                        "kernel": s.kernel,
                        "label": label(m["score"]),
                        "notes": s.notes,
                        **m,
                    }
                    for s, m in results
                ],
                "shift": model.batch_shift(study_outputs),
            }
        )
    if not report["studies"]:
        raise DataError(f"{folder}: nothing could be scored ({'; '.join(report['skipped'][:3])})")


def _predict_series_of(model, folder, series_list, window, aggregation, t, label, rows, report, cam_dir) -> list:
    """A study's series, each scored as a volume: its rows, and (series, summary) of those that could be scored."""
    from covidct.data.dicom_study import iter_series

    results = []
    for s in series_list:
        unseen = model.unseen_acquisition(of_file(s.slices[0].path)) if s.slices else None
        entries = VolumeScorer(model, unseen).run(iter_series(s, window))
        for k, e in enumerate(entries):
            e["index"], e["file"] = k, str(e["key"].path)
        try:
            summary = summarise_volume(entries, aggregation)
        except DataError as e:
            report["skipped"].append(f"series {s.label} of {folder}: {e}")
            continue
        _slice_rows(rows, str(folder), s.label, entries, label, t)
        rows.append(_summary_row(str(folder), s.label, "volume", summary["score"], label, t, summary))
        for top in summary["top_slices"]:
            top["file"] = entries[top["slice"]]["file"]
        results.append((s, summary))
        if cam_dir is not None:
            _save_top_cams(model, folder, None, summary, cam_dir, series=s, window=window)
    return results


def dicom_top_slices(tops: list[dict[str, Any]], window: tuple[float, float] = LUNG_WINDOW) -> list[Image.Image]:
    """A DICOM series' top slices (summary["top_slices"], each with its "file") as grey pictures in `window`, read
    again from their files: the series is streamed, not kept."""
    from covidct.data.dicom_study import slice_hu

    return [grey_image(apply_window(slice_hu(Path(top["file"]))[0], *window)) for top in tops]


def _save_top_cams(model, path, greys, summary, cam_dir, series=None, window=LUNG_WINDOW) -> None:
    """A montage PNG of the top-k slices with their heat maps (Grad-CAM), beside per-slice overlays."""
    from covidct.inference.explain import explain, overlay

    tops = summary["top_slices"]
    images = dicom_top_slices(tops, window) if series is not None else [grey_image(greys[t["slice"]]) for t in tops]
    if not images:
        return
    tiles = [overlay(img, cam).resize((256, 256)) for img, cam in zip(images, explain(model, images))]
    montage = Image.new("RGB", (256 * len(tiles), 256))
    for i, tile in enumerate(tiles):
        montage.paste(tile, (256 * i, 0))
    from covidct.fileio import atomic_write
    from covidct.inference.explain import cam_name

    cam_dir.mkdir(parents=True, exist_ok=True)
    stem = cam_name(path).removesuffix("_cam.png") + (f"_{series.label}" if series is not None else "")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    atomic_write(cam_dir / f"{stem}_top{len(tiles)}_cam.png", lambda p: montage.save(p, format="PNG"))

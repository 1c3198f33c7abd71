"""Exporting a trained model: safetensors weights + a JSON model card (what prediction and serving load by
default: no pickle, so loading a stranger's file runs no code), and ONNX with a dynamic batch, verified against
PyTorch on real images when it is written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.data import load_rgb
from covidct.errors import ModelError
from covidct.fileio import atomic_write, read_json
from covidct.inference.load import (
    PREPROCESSING_KEY,
    WEIGHTS_KEY,
    LoadedModel,
    load_checkpoint,
    load_safetensors_model,
    weights_fingerprint,
)
from covidct.inference.scorer import Scorer, WithFeatures
from covidct.models.head import score_of
from covidct.runs import RunDir
from covidct.runs.model_card import CARD_NAME, ModelCard

__all__ = ["CARD_NAME", "export_run", "load_safetensors_model", "write_onnx"]

ONNX_TOLERANCE = 1e-3


def _contiguous(net: nn.Module) -> nn.Module:
    return net.eval().float().to(memory_format=torch.contiguous_format)


def _plain_model(loaded: LoadedModel) -> Scorer:
    """The scorer (network with the ImageNet probe blended in, when the model has one) in the contiguous layout."""
    if loaded.probe is not None:
        _contiguous(loaded.probe.net)
    return Scorer(_contiguous(loaded.module), loaded.probe)


def export_safetensors(module: LoadedModel, out_dir: Path) -> tuple[Path, Path]:
    """model.safetensors (the backbone with its head) and model.json (the card) in out_dir."""
    from safetensors.torch import save_file

    model = _contiguous(module.module)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    weights = atomic_write(out_dir / "model.safetensors", lambda p: save_file(state, str(p), {"format": "pt"}))
    if module.probe is not None:  # beside the weights: load_trained attaches it as it attaches the detector
        module.probe.save(out_dir)
    return weights, write_card(out_dir, module.card)


def write_card(out_dir: Path, card: ModelCard) -> Path:
    """Write model.json, keeping the ONNX verification record of an earlier export into the same folder."""
    path = out_dir / CARD_NAME
    if path.is_file() and card.onnx is None:
        # an unreadable card being replaced has no record to keep
        with contextlib.suppress(ModelError, AttributeError):
            card = replace(card, onnx=read_json(path, "").get("onnx"))
    return card.write(out_dir)


def export_onnx(module: LoadedModel, out_dir: Path, images: torch.Tensor) -> tuple[Path, float]:
    """model.onnx with a dynamic batch, checked against PyTorch (write_checked_onnx), and its record in the card.
    Returns (path, largest score difference)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    diff = write_checked_onnx(module, path, images)
    record = {"file": path.name, "verified_on_images": int(images.shape[0]), "max_score_difference": diff}
    write_card(out_dir, replace(module.card, onnx=record))
    return path, diff


def write_checked_onnx(module: LoadedModel, path: Path, images: torch.Tensor) -> float:
    """The scorer (network, ImageNet probe, the detector's features) as one ONNX graph at `path`, written only when
    it agrees with PyTorch on `images` (preprocessed, N x 3 x H x W): scores within ONNX_TOLERANCE, detector
    features as wide and within ONNX_TOLERANCE of their scale. Stamped with the fingerprint of the weights it was
    made from (load.WEIGHTS_KEY), which the loader checks. Returns the largest score difference."""
    import onnx
    import onnxruntime as ort

    fingerprint = weights_fingerprint(module)
    model = _plain_model(module)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_onnx(model, module.preprocessing.input_size, tmp)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got, got_features = session.run(None, {"image": images.numpy().astype(np.float32)})
        with torch.no_grad():
            want, want_features = (t.float().numpy() for t in WithFeatures(model)(images))
        diff = float((score_of(torch.from_numpy(got)) - score_of(torch.from_numpy(want))).abs().max())
        if not diff < ONNX_TOLERANCE:
            raise ModelError(f"ONNX export differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}); not written")
        if got_features.shape != want_features.shape:  # what the detector reads: the same width, the same values
            widths = f"{got_features.shape[1]} wide, PyTorch's {want_features.shape[1]}"
            raise ModelError(f"ONNX export's detector features are {widths}; not written")
        feature_diff = float(np.abs(got_features - want_features).max() / max(1.0, np.abs(want_features).max()))
        if not feature_diff < ONNX_TOLERANCE:
            relative = f"{feature_diff:.2e} (relative, > {ONNX_TOLERANCE})"
            raise ModelError(f"ONNX export's detector features differ from PyTorch's by {relative}; not written")
        graph = onnx.load(str(tmp))
        recipe = json.dumps(module.preprocessing.to_dict(), sort_keys=True)  # what check_graph compares the card with
        onnx.helper.set_model_props(graph, {WEIGHTS_KEY: fingerprint, PREPROCESSING_KEY: recipe})
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def write_run_graph(run: RunDir, module: LoadedModel | None = None) -> Path:
    """checkpoints/best.onnx: the best checkpoint's scorer (`module`, else read from the run) as an ONNX graph
    (write_checked_onnx, on the first validation images), which load_trained runs with ONNX Runtime when it scores
    the run folder (2x faster than PyTorch here: benchmarks/SPEED.md). Derived from the checkpoint and the probe,
    never a second home of the threshold or the detector: those are read from the run as before. Leaves `module`'s
    network in the contiguous layout."""
    module = module or load_checkpoint(run.checkpoint("best"), run)
    path = run.scorer_graph_path
    write_checked_onnx(module, path, verification_images(run, module, None))
    return path


def write_onnx(model: Scorer, size: int, path: Path) -> Path:
    """One self-contained ONNX file: input 'image' (batch x 3 x size x size, dynamic batch), outputs 'logits' and
    'ood_features' (what the out-of-distribution detector scores)."""
    program = torch.onnx.export(
        WithFeatures(model).eval(),
        (torch.zeros(2, 3, size, size),),
        input_names=["image"],
        output_names=["logits", "ood_features"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        dynamo=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    return path


def verification_images(run: RunDir, module: LoadedModel, data_dir: str | Path | None, n: int = 16) -> torch.Tensor:
    """The first n validation images of the run's data (of its training images when it has no validation split),
    preprocessed as the model expects."""
    splits = run.data(data_dir).splits
    samples = (splits["val"] or splits["train"])[:n]
    return module.tensor([load_rgb(s.path) for s in samples])


EXPORT_FORMATS = ("both", "safetensors", "onnx")


def export_run(
    run_dir: str | Path, fmt: str = "both", out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> list[Path]:
    """Export a run's best checkpoint as safetensors + card, as ONNX (+ card), or both (what training leaves in
    RUN_DIR/export: PyTorch for Grad-CAM and adaptation, ONNX Runtime for scoring, 2x faster here: SPEED.md); by
    default into RUN_DIR/export."""
    run = RunDir.at(run_dir)
    if fmt not in EXPORT_FORMATS:
        raise ModelError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    module = load_checkpoint(run.checkpoint("best"), run)
    module.card.checkpoint = None
    module.card.weights_sha256 = weights_fingerprint(module)  # ties the card, the graph and the detector to them
    out = Path(out_dir) if out_dir else run.export_dir
    detector = export_detector(run, data_dir)
    if detector is not None:
        module.card.ood = detector.card()
    with staged(out) as stage:  # a failed export leaves the folder as it was: no half export without a detector
        if fmt in ("both", "safetensors"):
            export_safetensors(module, stage)
        if fmt in ("both", "onnx"):
            export_onnx(module, stage, verification_images(run, module, data_dir))
        if detector is not None:
            from covidct.ood.storage import save_detector

            save_detector(detector, stage)
    written = [out / "model.safetensors", out / CARD_NAME] if fmt in ("both", "safetensors") else []
    if fmt in ("both", "onnx"):
        written += [out / "model.onnx"] if fmt == "both" else [out / "model.onnx", out / CARD_NAME]
    return written + ([out / "ood.json"] if detector is not None else [])


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to write into; when the block ends without an error, each file is moved into
    `out` (atomically, one by one: a reader sees the old file or the new one), else the folder is removed and `out`
    stays as it was. An earlier export's card is staged too: write_card keeps its ONNX record."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if (out / CARD_NAME).is_file():
            shutil.copy2(out / CARD_NAME, stage / CARD_NAME)
        yield stage
        out.mkdir(exist_ok=True)
        for path in stage.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_detector(run: RunDir, data_dir: str | Path | None) -> Any:
    """The run's out-of-distribution detector, fitted now when the run has none (a run trained before detectors)
    and its data is at hand; None, with a warning, when it cannot be."""
    import logging

    from covidct.errors import DataError
    from covidct.inference.run_detector import fit_for_run
    from covidct.ood.storage import load_detector

    detector = load_detector(run.ood_dir)
    if detector is not None:
        return detector
    log = logging.getLogger("covidct")
    try:
        detector = fit_for_run(run.path, data_dir=data_dir)
        log.warning(  # the export changes the run folder too: said, so that nobody finds it there unexplained
            "%s had no out-of-distribution detector: fitted one now (as covidct ood fit does) and saved it into %s "
            "and into the export",
            run.path,
            run.ood_dir,
        )
        return detector
    except (DataError, ModelError) as e:
        log.warning("no out-of-distribution detector exported (%s); fit one later: covidct ood fit %s", e, run.path)
        return None

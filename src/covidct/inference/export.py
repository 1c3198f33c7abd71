"""Exporting a trained model: safetensors weights + a JSON model card (what prediction and serving load by
default: no pickle, so loading a stranger's file runs no code), and ONNX with a dynamic batch, verified against
PyTorch on real images when it is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct.data import load_rgb
from covidct.errors import ModelError
from covidct.fileio import atomic_write, write_json
from covidct.inference.load import CARD_NAME, LoadedModel, load_checkpoint, load_safetensors_model
from covidct.runs import RunDir

__all__ = ["CARD_NAME", "export_run", "load_safetensors_model", "write_onnx"]

ONNX_TOLERANCE = 1e-3


def _contiguous(net: nn.Module) -> nn.Module:
    return net.eval().float().to(memory_format=torch.contiguous_format)


def _plain_model(loaded: LoadedModel) -> nn.Module:
    """The network (with the ImageNet probe blended in, when the model has one) in the contiguous layout."""
    model = _contiguous(loaded.module)
    if loaded.probe is not None:
        _contiguous(loaded.probe.net)
        return Blended(model, loaded.probe)
    return model


class Blended(nn.Module):
    """The network and its ImageNet probe as one module giving the blended logits (what the ONNX graph computes);
    the detector's feature taps stay on the network (`.model`)."""

    def __init__(self, model: nn.Module, probe: nn.Module) -> None:
        super().__init__()
        self.model, self.probe = model, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe.blend(self.model(x), x)


def export_safetensors(module: LoadedModel, out_dir: Path) -> tuple[Path, Path]:
    """model.safetensors (the backbone with its head) and model.json (the card) in out_dir."""
    from safetensors.torch import save_file

    model = _contiguous(module.module)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    card = module.card
    weights = atomic_write(out_dir / "model.safetensors", lambda p: save_file(state, str(p), {"format": "pt"}))
    if module.probe is not None:  # beside the weights: load_trained attaches it as it attaches the detector
        module.probe.save(out_dir)
    return weights, write_card(out_dir, card)


def write_card(out_dir: Path, card: dict[str, Any]) -> Path:
    """Write model.json, keeping the ONNX verification record of an earlier export into the same folder."""
    path = out_dir / CARD_NAME
    if path.is_file() and "onnx" not in card:
        old = json.loads(path.read_text())
        if "onnx" in old:
            card = {**card, "onnx": old["onnx"]}
    return write_json(path, card)


def export_onnx(module: LoadedModel, out_dir: Path, images: torch.Tensor) -> tuple[Path, float]:
    """model.onnx with a dynamic batch; verified on `images` (preprocessed, N x 3 x H x W): the largest absolute
    difference of the softmax scores against PyTorch must stay under ONNX_TOLERANCE. Returns (path, difference)."""
    import onnxruntime as ort

    model = _plain_model(module)
    size = module.preprocessing.input_size
    tmp = out_dir / ".model.onnx.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_onnx(model, size, tmp)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": images.numpy().astype(np.float32)})[0]  # [1]: the detector's features
        with torch.no_grad():
            want = model(images).float().numpy()
        diff = float(np.abs(_softmax(got)[:, 1] - _softmax(want)[:, 1]).max())
        if not diff < ONNX_TOLERANCE:
            raise ModelError(f"ONNX export differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}); not written")
        path = out_dir / "model.onnx"
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    card = dict(module.card)
    card["onnx"] = {"file": path.name, "verified_on_images": int(images.shape[0]), "max_score_difference": diff}
    write_card(out_dir, card)
    return path, diff


class WithFeatures(nn.Module):
    """The network with the out-of-distribution detector's features as a second output (covidct.ood.features), so
    ONNX Runtime gives the same check as PyTorch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from covidct.ood.features import FeatureTaps

        net = self.model.model if isinstance(self.model, Blended) else self.model
        with FeatureTaps(net) as taps:
            logits = self.model(x)
            return logits, taps.features()


def write_onnx(model: nn.Module, size: int, path: Path) -> Path:
    """One self-contained ONNX file: input 'image' (batch x 3 x size x size, dynamic batch), outputs 'logits' and
    'ood_features' (what the out-of-distribution detector scores)."""
    program = torch.onnx.export(
        WithFeatures(model).eval(), (torch.zeros(2, 3, size, size),), input_names=["image"],
        output_names=["logits", "ood_features"], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        dynamo=True, verbose=False,
    )  # fmt: skip
    program.save(str(path), external_data=False)
    return path


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def verification_images(run: RunDir, module: LoadedModel, data_dir: str | Path | None, n: int = 16) -> torch.Tensor:
    """The first n validation images of the run's data, preprocessed as the model expects."""
    samples = run.data(data_dir).splits["val"][:n]
    return module.tensor([load_rgb(s.path) for s in samples])


def export_run(
    run_dir: str | Path, fmt: str = "safetensors", out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> list[Path]:
    """Export a run's best checkpoint as safetensors + card, or as ONNX (+ card); by default into RUN_DIR/export."""
    run = RunDir.at(run_dir)
    if fmt not in ("safetensors", "onnx"):
        raise ModelError(f"--format must be onnx or safetensors, got {fmt!r}")
    module = load_checkpoint(run.checkpoint("best"), run)
    module.card.pop("checkpoint", None)
    out = Path(out_dir) if out_dir else run.export_dir
    detector = export_detector(run, data_dir)
    if detector is not None:
        module.card["ood"] = detector.card()
    if fmt == "safetensors":
        written = list(export_safetensors(module, out))
    else:
        path, _ = export_onnx(module, out, verification_images(run, module, data_dir))
        written = [path, out / CARD_NAME]
    if detector is not None:
        written.append(detector.save(out))
    return written


def export_detector(run: RunDir, data_dir: str | Path | None) -> Any:
    """The run's out-of-distribution detector, fitted now when the run has none (a run trained before detectors)
    and its data is at hand; None, with a warning, when it cannot be."""
    import logging

    from covidct.errors import DataError
    from covidct.inference.ood import fit_for_run
    from covidct.ood.detector import OODDetector

    detector = OODDetector.load(run.ood_dir)
    if detector is not None:
        return detector
    try:
        return fit_for_run(run.path, data_dir=data_dir)
    except (DataError, ModelError) as e:
        logging.getLogger("covidct").warning(
            "no out-of-distribution detector exported (%s); fit one later: covidct ood fit %s", e, run.path
        )
        return None

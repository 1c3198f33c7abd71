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


def _plain_model(loaded: LoadedModel) -> nn.Module:
    return loaded.module.eval().float().to(memory_format=torch.contiguous_format)


def export_safetensors(module: LoadedModel, out_dir: Path) -> tuple[Path, Path]:
    """model.safetensors (the backbone with its head) and model.json (the card) in out_dir."""
    from safetensors.torch import save_file

    model = _plain_model(module)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    card = module.card
    weights = atomic_write(out_dir / "model.safetensors", lambda p: save_file(state, str(p), {"format": "pt"}))
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
        got = session.run(None, {"image": images.numpy().astype(np.float32)})[0]
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


def write_onnx(model: nn.Module, size: int, path: Path) -> Path:
    """One self-contained ONNX file: input 'image' (batch x 3 x size x size, dynamic batch), output 'logits'."""
    program = torch.onnx.export(
        model.eval(), (torch.zeros(2, 3, size, size),), input_names=["image"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False,
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
    module = load_checkpoint(run.checkpoint("best"), run)
    module.card.pop("checkpoint", None)
    out = Path(out_dir) if out_dir else run.export_dir
    if fmt == "safetensors":
        return list(export_safetensors(module, out))
    if fmt == "onnx":
        path, _ = export_onnx(module, out, verification_images(run, module, data_dir))
        return [path, out / CARD_NAME]
    raise ModelError(f"--format must be onnx or safetensors, got {fmt!r}")

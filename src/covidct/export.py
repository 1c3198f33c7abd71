"""Exporting a trained model: safetensors weights + a JSON model card (what prediction and serving load by
default: no pickle, so loading a stranger's file runs no code), and ONNX with a dynamic batch, verified against
PyTorch on real images when it is written."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidct import DISCLAIMER, __version__
from covidct.errors import ModelError
from covidct.fileio import atomic_write, write_json
from covidct.models import Preprocessing, create_model

ONNX_TOLERANCE = 1e-3
CARD_NAME = "model.json"


def model_card(module: Any, run_dir: Path) -> dict[str, Any]:
    """Everything needed to use the weights, and what is known about how good they are."""
    hp = module.hparams
    size = hp.preprocessing["input_size"]
    card: dict[str, Any] = {
        "format": "covidct-model/1",
        "architecture": hp.model_name,
        "preprocessing": dict(hp.preprocessing),
        "class_names": list(hp.class_names),
        "positive_class": list(hp.class_names)[1],
        "threshold": float(hp.threshold),
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "note": "RGB in [0, 1], then (x - mean) / std"},
        "output": {"name": "logits", "shape": ["batch", 2], "score": "softmax(logits)[:, 1] = probability of class 1"},
        "covidct_version": __version__,
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_run": run_dir.name,
        "intended_use": DISCLAIMER,
    }  # fmt: skip
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        card["training_data"] = {"source": s.get("data_source"), "counts": s.get("counts")}
        card["training"] = {k: s.get(k) for k in ("best_epoch", "epochs_run", "monitor", "best_score")}
    metrics = run_dir / "eval-test" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        card["metrics"] = {
            "split": "test",
            "n": m["n"],
            **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "auc")},
        }
        card["metrics"]["ci95"] = {
            k: m.get("ci95", {}).get(k) for k in ("accuracy", "sensitivity", "specificity", "auc")
        }
    return card


def _plain_model(module: Any) -> nn.Module:
    return module.model.eval().float().to(memory_format=torch.contiguous_format)


def export_safetensors(module: Any, run_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """model.safetensors (the backbone with its head) and model.json (the card) in out_dir."""
    from safetensors.torch import save_file

    model = _plain_model(module)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    card = model_card(module, run_dir)
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


def load_safetensors_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from model.safetensors and the model.json beside it."""
    from safetensors.torch import load_file

    path = Path(path)
    card_path = path.with_name(CARD_NAME)
    if not card_path.is_file():
        raise ModelError(f"{path} has no {CARD_NAME} beside it (the card says which architecture to build)")
    card = json.loads(card_path.read_text())
    model, _ = create_model(card["architecture"], pretrained=False)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise ModelError(f"{path} does not fit {card['architecture']}: {type(e).__name__}: {e}") from None
    return model.eval(), card


def export_onnx(module: Any, run_dir: Path, out_dir: Path, images: torch.Tensor) -> tuple[Path, float]:
    """model.onnx with a dynamic batch; verified on `images` (preprocessed, N x 3 x H x W): the largest absolute
    difference of the softmax scores against PyTorch must stay under ONNX_TOLERANCE. Returns (path, difference)."""
    import onnxruntime as ort

    model = _plain_model(module)
    size = Preprocessing.from_dict(module.hparams.preprocessing).input_size
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
    card = model_card(module, run_dir)
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


def verification_images(run_dir: Path, module: Any, data_dir: str | Path | None, n: int = 16) -> torch.Tensor:
    """The first n validation images of the run's data, preprocessed as the model expects."""
    from covidct.evaluation import eval_dataset, run_data

    ds = eval_dataset(module, run_data(run_dir, data_dir).splits["val"][:n])
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def export_run(
    run_dir: str | Path, fmt: str = "safetensors", out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> list[Path]:
    """Export a run's best checkpoint as safetensors + card, or as ONNX (+ card); by default into RUN_DIR/export."""
    from covidct.evaluation import find_checkpoint, load_classifier

    run_dir = Path(run_dir)
    module = load_classifier(find_checkpoint(run_dir))
    out = Path(out_dir) if out_dir else run_dir / "export"
    if fmt == "safetensors":
        return list(export_safetensors(module, run_dir, out))
    if fmt == "onnx":
        path, _ = export_onnx(module, run_dir, out, verification_images(run_dir, module, data_dir))
        return [path, out / CARD_NAME]
    raise ModelError(f"--format must be onnx or safetensors, got {fmt!r}")

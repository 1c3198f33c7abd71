"""One rule of trust in a model folder (issue 47): every file of a run or an export (graph, weights, card, detector)
is tied to the others by the weights' fingerprint, and the operating point has one source, so that a file from
another model, or a threshold edited in one copy, is refused naming the file instead of being used in silence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from covidct.errors import ModelError
from covidct.inference.export import export_run
from covidct.inference.load import load_trained, weights_fingerprint
from covidct.inference.run_detector import fit_for_run
from tests.conftest import perturbed_copy


@pytest.fixture(scope="module")
def two_exports(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trust")
    other = perturbed_copy(trained_run, root / "other-run")
    fit_for_run(other)  # a detector fitted for the other model's own weights
    mine, theirs = root / "mine", root / "theirs"
    export_run(trained_run, "both", mine)
    export_run(other, "both", theirs)
    return mine, theirs


def _copy(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def test_an_export_carries_the_fingerprint_of_its_weights_and_loads(two_exports):
    mine, _ = two_exports
    card = json.loads((mine / "model.json").read_text())
    model = load_trained(mine)
    assert card["weights_sha256"] == weights_fingerprint(model) and model.session is not None


def test_an_export_scored_by_its_graph_builds_its_network_at_first_use(two_exports):
    """predict and serve score an export with its graph: the PyTorch network (timm, torchvision: about a second of
    every start) is built only when something asks for it (Grad-CAM, adaptation), from the weights checked on load."""
    mine, _ = two_exports
    model = load_trained(mine)
    assert model.session is not None and model.network_from is not None and vars(model)["_module"] is None
    assert repr(model).startswith("LoadedModel(") and model.network_from is not None  # showing it builds nothing
    network = model.module
    assert isinstance(network, torch.nn.Module) and model.network_from is None and model.module is network
    assert weights_fingerprint(model) == json.loads((mine / "model.json").read_text())["weights_sha256"]


def test_an_export_graph_of_another_model_is_refused_naming_it(two_exports, tmp_path):
    mine, theirs = two_exports
    swapped = _copy(mine, tmp_path / "swapped")
    shutil.copy(theirs / "model.onnx", swapped / "model.onnx")
    with pytest.raises(ModelError, match=r"model\.onnx was made from other weights"):
        load_trained(swapped)
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    shutil.copy(theirs / "model.onnx", onnx_only / "model.onnx")
    shutil.copy(mine / "model.json", onnx_only / "model.json")
    with pytest.raises(ModelError, match=r"model\.onnx was made from other weights"):
        load_trained(onnx_only)


def test_export_weights_or_a_detector_of_another_model_are_refused(two_exports, tmp_path):
    mine, theirs = two_exports
    swapped = _copy(mine, tmp_path / "weights")
    shutil.copy(theirs / "model.safetensors", swapped / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.json was made from other weights"):
        load_trained(swapped / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.json was made from other weights"):
        load_trained(
            swapped
        )  # scored by its graph, which never reads the network: its weights are checked all the same
    detector = _copy(mine, tmp_path / "detector")
    for name in ("ood.json", "ood.safetensors"):
        shutil.copy(theirs / name, detector / name)
    with pytest.raises(ModelError, match=r"ood\.json was made from other weights"):
        load_trained(detector)


def test_a_threshold_edited_in_one_copy_is_refused_not_chosen(own_run, tmp_path):
    from covidct.cli import main

    export_run(own_run, "safetensors")
    assert main(["threshold", str(own_run), "--choose", "youden"]) == 0
    card_path = own_run / "export" / "model.json"
    card = json.loads(card_path.read_text())
    assert card["operating_point"]["threshold"] == card["threshold"]
    card["threshold"] = 0.3 if card["threshold"] != 0.3 else 0.4
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model\.json: 'threshold' .* disagrees with its operating point"):
        load_trained(own_run / "export")
    card["operating_point"]["threshold"] = card["threshold"]  # both copies in the card edited: the run disagrees
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"disagrees with the run's operating point"):
        load_trained(own_run / "export")


def test_a_damaged_export_weights_file_is_refused_naming_it_on_load(two_exports, tmp_path):
    """Read on load even where the graph scores (the network is built later): a cut or random file is refused by
    name with what to do, not left to fail at the first heat map."""
    mine, _ = two_exports
    for name, damage in (("cut", lambda b: b[: len(b) // 3]), ("random", lambda b: bytes(reversed(b)))):
        folder = _copy(mine, tmp_path / name)
        weights = folder / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        with pytest.raises(ModelError, match=r"model\.safetensors is not a safetensors file .*export the run again"):
            load_trained(folder)


def test_a_card_edited_away_from_the_preprocessing_its_graph_was_exported_with_is_refused(two_exports, tmp_path):
    """The graph records the preprocessing it was verified with: a card whose mean, or input side, was changed
    since (by hand, or copied from another export) is refused naming the file and the field, not scored with other
    numbers in silence or met as ONNX Runtime's shape error."""
    mine, _ = two_exports
    side = json.loads((mine / "model.json").read_text())["preprocessing"]["input_size"]
    for field, value, says in (
        ("mean", [0.1, 0.2, 0.3], r"model\.onnx was exported with other preprocessing than its card's \(mean\)"),
        ("input_size", side + 32, rf"model\.onnx takes images of {side}x{side} pixels and its card says {side + 32}"),
    ):
        edited = _copy(mine, tmp_path / field)
        card = json.loads((edited / "model.json").read_text())
        card["preprocessing"][field] = value
        if field == "input_size":  # with a resize that reads: the side alone differs from the graph's
            card["preprocessing"]["resize"] = max(card["preprocessing"]["resize"], side + 32)
        (edited / "model.json").write_text(json.dumps(card))
        (edited / "model.safetensors").unlink()  # the graph alone with its card: the ONNX file's own check
        with pytest.raises(ModelError, match=says):
            load_trained(edited)


def test_a_checkpoint_whose_preprocessing_was_edited_past_its_bounds_is_refused_naming_it(trained_run, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    saved = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["preprocessing"]["input_size"] = 50_000  # 50,000 x 50,000 images: the memory, gone
    torch.save(saved, ckpt)
    with pytest.raises(ModelError, match=r"best\.ckpt: hyper_parameters 'preprocessing' cannot be read .*input_size"):
        load_trained(ckpt)

import json

import numpy as np
import pytest
import torch

from covidct.cli import main
from covidct.errors import ModelError
from covidct.evaluation.scoring import load_classifier
from covidct.inference.export import export_run, load_safetensors_model, verification_images
from covidct.runs import RunDir, find_checkpoint


def test_safetensors_roundtrip_and_card(trained_run, tmp_path):
    weights, card_path, detector = export_run(trained_run, "safetensors", tmp_path / "e")
    assert detector.name == "ood.json" and (tmp_path / "e" / "ood.safetensors").is_file()  # the detector travels
    model, card = load_safetensors_model(weights)
    assert card.to_dict() == json.loads(card_path.read_text())
    assert card.architecture == "timm:resnet10t" and card.class_names == ["NonCOVID", "COVID"]
    assert card.threshold == 0.5 and set(card.to_dict()["preprocessing"]) >= {"mean", "std", "input_size", "grayscale"}
    module = load_classifier(find_checkpoint(trained_run))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), module.module(x), atol=1e-5)


def test_safetensors_needs_its_card(trained_run, tmp_path):
    weights, card, _ = export_run(trained_run, "safetensors", tmp_path / "e")
    card.unlink()
    with pytest.raises(ModelError, match=r"no model\.json beside it"):
        load_safetensors_model(weights)


@pytest.mark.slow
def test_onnx_export_verified_with_dynamic_batch(trained_run, tmp_path):
    import onnxruntime as ort

    path, card_path, _ = export_run(trained_run, "onnx", tmp_path / "e")
    card = json.loads(card_path.read_text())
    assert card["onnx"]["verified_on_images"] > 0 and card["onnx"]["max_score_difference"] < 1e-3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = load_classifier(find_checkpoint(trained_run))
    images = verification_images(RunDir(trained_run), module, None)
    for n in (1, 3):  # a batch size other than the one used to trace
        got = session.run(None, {"image": images[:n].numpy()})[0]
        with torch.no_grad():
            want = module.module(images[:n]).numpy()
        assert got.shape == (n, 2)
        assert np.abs(got - want).max() < 1e-3
    assert not list((tmp_path / "e").glob(".*tmp*"))


def test_export_cli_bad_format(trained_run, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(trained_run), "--format", "pickle"])
    assert "invalid choice" in capsys.readouterr().err

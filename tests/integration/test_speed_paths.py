"""Scoring at speed gives the answers of scoring one image at a time: the ONNX graph training leaves (ONNX Runtime)
against the checkpoint (PyTorch), predict's batches read by worker threads against images scored alone, and serve's
dynamic batches against requests scored alone."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidct.data import load_rgb
from covidct.data.inputs import list_inputs
from covidct.inference.batching import Batcher
from covidct.inference.load import WEIGHTS_KEY, load_checkpoint, load_trained, with_detector
from covidct.inference.predict import predict_inputs
from covidct.inference.reading import BATCH
from covidct.inference.serve import create_app
from covidct.runs import RunDir
from tests.conftest import synthetic_ct
from tests.upload_files import png_bytes

SCORE_TOLERANCE = 1e-5  # ONNX Runtime against PyTorch, fp32 both (issue: "identical to 1e-5 in score")


@pytest.fixture(scope="module")
def fast(trained_run):
    return load_trained(trained_run)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return [Image.fromarray(synthetic_ct(rng, k % 2 == 0, (64 + k, 48))).convert("RGB") for k in range(2 * BATCH + 5)]


def test_training_leaves_a_graph_that_scores_as_the_checkpoint(trained_run, fast, images):
    run = RunDir(trained_run)
    assert run.scorer_graph_path.is_file() and not run.export_dir.exists()
    assert fast.session is not None  # what predict and serve run for a run folder
    checkpoint = with_detector(load_checkpoint(run.checkpoint("best"), run), run.ood_dir)
    assert checkpoint.session is None and fast.threshold == checkpoint.threshold
    want, want_ood = checkpoint.score_images(images)
    got, got_ood = fast.score_images(images)
    assert np.abs(got - want).max() < SCORE_TOLERANCE
    np.testing.assert_allclose(got_ood, want_ood, rtol=1e-3, atol=1e-3)
    assert (fast.ood_flags(got_ood) == checkpoint.ood_flags(want_ood)).mean() >= 0.95


def test_a_graph_of_other_weights_is_refused_and_a_damaged_one_not_used(trained_run, tmp_path, caplog):
    import shutil

    import onnx

    from covidct.errors import ModelError

    run = RunDir(Path(shutil.copytree(trained_run, tmp_path / "run")))
    graph = onnx.load(str(run.scorer_graph_path))
    onnx.helper.set_model_props(graph, {WEIGHTS_KEY: "0" * 64})  # as if the checkpoint had changed since
    onnx.save(graph, str(run.scorer_graph_path))
    with pytest.raises(ModelError, match=r"best\.onnx was made from other weights"):
        load_trained(run.path)
    run.scorer_graph_path.write_bytes(b"not a graph")
    assert load_trained(run.path).session is None and "cannot be read" in caplog.text


def test_predict_scores_images_in_batches_as_one_at_a_time(fast, images, tmp_path):
    folder = tmp_path / "slices"
    (folder / "b").mkdir(parents=True)
    for k, img in enumerate(images):  # some in a sub-folder: the CSV keeps the order of the inputs
        img.save(folder / ("b" if k % 3 == 0 else "") / f"{k:03d}.png")
    paths = list_inputs([str(folder)])
    report: dict = {}
    rows = predict_inputs(fast, paths, report=report)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for row, path in zip(rows, paths):
        alone, ood = fast.score_images([load_rgb(path)])
        assert row["score"] == pytest.approx(round(float(alone[0]), 6), abs=2e-6)
        assert row["ood_score"] == pytest.approx(round(float(ood[0]), 4), abs=2e-4)
    assert report["shift"]["n"] == len(images)  # every batch's features reached the shift test


def test_batches_scored_side_by_side_answer_as_one_session_in_order(trained_run, fast, images, tmp_path):
    """With a session of two threads, predict runs the graph in two worker threads of one thread each
    (LoadedModel.side_by_side): the same rows in the same order, an unreadable file skipped by name."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for k, img in enumerate(images):
        img.save(folder / f"{k:03d}.png")
    (folder / "020.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")  # mid-batch
    paths = list_inputs([str(folder)])
    two = load_trained(trained_run, threads=2)
    session, workers = two.side_by_side()
    assert workers == 2 and session is not two.session and session.get_session_options().intra_op_num_threads == 1
    one_report, two_report = {}, {}
    want = predict_inputs(load_trained(trained_run, threads=1), paths, report=one_report)
    got = predict_inputs(two, paths, report=two_report)
    assert [r["path"] for r in got] == [r["path"] for r in want] == [str(p) for p in paths if p.name != "020.png"]
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=2e-6) and g["label"] == w["label"]
    assert len(two_report["skipped"]) == 1 and "020.png" in two_report["skipped"][0]
    assert two_report["shift"]["n"] == one_report["shift"]["n"] == len(images) - 1
    from covidct.data.medical import LUNG_WINDOW
    from covidct.inference.reading import prepared_images

    held = [len(b.images) for b in prepared_images(two, paths, LUNG_WINDOW)]
    kept = [len(b.images) for b in prepared_images(two, paths, LUNG_WINDOW, keep_images=True)]
    assert held == [0] * len(held) and sum(kept) == len(images) - 1  # decoded pictures only for heat maps


def test_dynamic_batches_answer_as_requests_scored_alone(fast, images):
    batcher = Batcher(fast, wait_ms=200, max_batch=8)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(batcher.score, images[:16]))
    assert batcher.batches < 16 and batcher.card()["mean_batch"] > 1  # requests were gathered
    for img, (score, ood, outputs) in zip(images, answers):
        with fast.collecting() as alone:
            want, want_ood = fast.score_images([img])
        assert abs(float(score[0]) - float(want[0])) < SCORE_TOLERANCE
        assert float(ood[0]) == pytest.approx(float(want_ood[0]), rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(outputs[0][0], alone[0][0], rtol=1e-4, atol=1e-4)
        assert outputs[0][0].shape == alone[0][0].shape
        assert {k: v.shape for k, v in outputs[0][1].items()} == {k: v.shape for k, v in alone[0][1].items()}


def test_a_failed_batch_fails_its_requests_and_the_batcher_goes_on(fast, images, monkeypatch):
    batcher = Batcher(fast, wait_ms=1)
    with monkeypatch.context() as patch:
        patch.setattr(fast, "score_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("scoring broke")))
        with pytest.raises(RuntimeError, match="scoring broke"):
            batcher.score(images[0])
    score, _, _ = batcher.score(images[0])
    assert abs(float(score[0]) - float(fast.score_images([images[0]], check=False)[0][0])) < SCORE_TOLERANCE


def test_serve_with_batching_answers_as_without(fast):
    png = png_bytes(synthetic_ct(np.random.default_rng(5), True, (64, 48)))
    alone = TestClient(create_app(fast)).post("/api/v1/predict", files={"file": ("a.png", png)}).json()
    client = TestClient(create_app(fast, batch_wait_ms=5))
    batched = client.post("/api/v1/predict", files={"file": ("a.png", png)}).json()
    assert batched["score"] == pytest.approx(alone["score"], abs=2e-6) and batched["label"] == alone["label"]
    assert batched["ood_score"] == pytest.approx(alone["ood_score"], abs=2e-4)
    batching = client.get("/api/v1/model").json()["serving"]["batching"]
    assert batching["wait_ms"] == 5 and batching["batches"] == 1
    assert TestClient(create_app(fast)).get("/api/v1/model").json()["serving"]["batching"] is None

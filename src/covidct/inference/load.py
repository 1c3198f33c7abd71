"""The one loader of a trained model: `load_trained(path)` returns a LoadedModel (the network or an ONNX Runtime
session, its preprocessing transform and its card: covidct.runs.model_card.ModelCard) from an export folder, a model
file or a run folder. Checkpoints are read with torch.load(weights_only=True): no pickled
code runs, and no training code is needed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError
from covidct.inference.loaded import LoadedModel, onnx_session
from covidct.models import create_model
from covidct.runs import RunDir, find_checkpoint
from covidct.runs.model_card import CARD_NAME, ModelCard, run_records
from covidct.runs.operating_point import checked_threshold

WEIGHTS_KEY = "covidct_weights_sha256"  # an ONNX graph's metadata: the fingerprint of the weights it was made from
PREPROCESSING_KEY = "covidct_preprocessing"  # and the preprocessing (JSON) it was verified with
log = logging.getLogger("covidct")


def unsafe_message(path: Path, error: Exception) -> str:
    """Why a checkpoint was refused, in one line that says what the file is: torch's own message is several
    paragraphs, and the same for a cut file as for random bytes."""
    import zipfile

    if isinstance(error, FileNotFoundError):
        return f"checkpoint {path} does not exist"
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return f"checkpoint {path} is empty (0 bytes): it was cut while being written; train again or restore it"
    if head != b"PK\x03\x04":
        return (
            f"checkpoint {path} is not a PyTorch checkpoint (a checkpoint is a ZIP archive; this file is not); "
            "give a run folder or its checkpoints/best.ckpt"
        )
    if not zipfile.is_zipfile(path):
        return f"checkpoint {path} is truncated or damaged (its archive has no end); train again or restore it"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Weights only load failed" in first or "Unsupported global" in str(error):
        return (
            f"checkpoint {path} cannot be read safely: it holds pickled objects besides tensors and plain "
            "values, which covidct never runs (was it written by covidct?)"
        )
    return f"checkpoint {path} cannot be read ({type(error).__name__}: {first[:200]})"


def read_checkpoint(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(unsafe_message(ckpt, e)) from None


def load_checkpoint(ckpt: str | Path, run: RunDir | None = None, operating_point: bool = True) -> LoadedModel:
    """The network of a training checkpoint (the module's state under model.*), with its card and its operating
    point (threshold.json's when the run has one, else the checkpoint's), each validated. operating_point=False:
    neither is read (the card's threshold is then None: reading it fails), for `covidct threshold`, which chooses
    one anew and must be able to mend a damaged record."""
    ckpt = Path(ckpt)
    saved = read_checkpoint(ckpt)
    hp = saved.get("hyper_parameters") or {}
    if "model_name" not in hp:
        raise ModelError(f"checkpoint {ckpt} is not a covidct checkpoint (no model_name in its hyperparameters)")
    model, _ = create_model(hp["model_name"], pretrained=False)
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"checkpoint {ckpt} does not fit {hp['model_name']}: {type(e).__name__}: {e}") from None
    where = f"checkpoint {ckpt}: hyper_parameters 'threshold'"
    threshold = checked_threshold(hp.get("threshold", 0.5), where) if operating_point else None
    try:
        preprocessing = Preprocessing.from_dict(hp.get("preprocessing"))
    except ValueError as e:
        raise ModelError(f"checkpoint {ckpt}: hyper_parameters 'preprocessing' cannot be read ({e})") from None
    card = ModelCard(
        hp["model_name"],
        preprocessing,
        list(hp["class_names"]),
        threshold,
        checkpoint={"file": ckpt.name, "epoch": int(saved.get("epoch", -1)) + 1},
        **(run_records(run) if run is not None else {}),
    )
    loaded = LoadedModel(card, module=inference_ready(model), source=str(run.path if run else ckpt))
    if run is None:
        return loaded
    if operating_point:  # threshold.json is the run's one record: with an export or without, the same threshold
        loaded = with_run_threshold(loaded, run, ckpt.name)
    return with_probe(loaded, run.probe_dir)


def load_safetensors_model(path: str | Path) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild a model from model.safetensors and the model.json beside it."""
    card, state = read_safetensors(path)
    return network_from_state(card, state, Path(path)), card


def read_safetensors(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card beside model.safetensors and the file's tensors (safetensors: no code is read)."""
    from safetensors.torch import load_file

    path = Path(path)
    card_path = path.with_name(CARD_NAME)
    if not card_path.is_file():
        raise ModelError(f"{path} has no {CARD_NAME} beside it (the card says which architecture to build)")
    card = ModelCard.read(card_path)
    try:
        return card, load_file(str(path))
    except Exception as e:
        raise ModelError(
            f"{path} is not a safetensors file covidct can read ({type(e).__name__}: {e}); export the run again "
            "(covidct export RUN) or restore the file"
        ) from None


def network_from_state(card: ModelCard, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """The card's architecture with `state`'s weights (all of them, no more), ready to score."""
    model, _ = create_model(card.architecture, pretrained=False)
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{path} does not fit {card.architecture}: {type(e).__name__}: {e}") from None
    return inference_ready(model)


def inference_ready(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, fp32, channels-last weights: oneDNN then runs every convolution channels-last (inputs need not be
    converted), 1.8x faster on this project's CPU for the same figures to 1e-6 (benchmarks/OOD.md, fitting time).
    Export converts back to the contiguous layout before writing."""
    return model.eval().float().to(memory_format=torch.channels_last)


def weights_fingerprint(model: LoadedModel) -> str:
    """sha256 of the network's and the ImageNet probe's weights (names, shapes and values, whatever their memory
    layout): what an ONNX graph made from them is stamped with, so a graph of other weights is never used."""
    return state_fingerprint(*({} if part is None else part.state_dict() for part in (model.module, model.probe)))


def state_fingerprint(*states: dict[str, torch.Tensor]) -> str:
    """weights_fingerprint of state dicts (a network's, then its probe's); floating-point tensors as the network
    holds them once built (fp32: inference_ready), so a safetensors file's tensors hash as the network built from
    them does."""
    import hashlib

    digest = hashlib.sha256()
    for state in states:
        for name, value in sorted(state.items()):
            value = value.float() if value.is_floating_point() else value
            digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def safetensors_model(path: Path) -> LoadedModel:
    """model.safetensors with its card, ImageNet probe and detector, each checked against the weights' fingerprint
    on load; the network itself is built at its first use (LoadedModel.network_from), which an export scored by its
    graph never needs."""
    card, state = read_safetensors(path)
    model = with_probe(
        LoadedModel(card, source=str(path), network_from=lambda: network_from_state(card, state, path)), path.parent
    )
    weights = state_fingerprint(state, {} if model.probe is None else model.probe.state_dict())
    if card.weights_sha256 is not None:  # an export made before fingerprints were recorded says nothing
        check_made_from(card.weights_sha256, weights, path.with_name(CARD_NAME), str(path))
    return with_detector(model, path.parent, weights)


def with_run_graph(
    model: LoadedModel, path: Path, threads: int | None = None, weights: str | None = None
) -> LoadedModel:
    """Score with the run's ONNX graph (checkpoints/best.onnx) when there is one and it gives the detector's features
    when the model has a detector; PyTorch otherwise. A graph made from other weights is refused (check_made_from);
    an unreadable one costs speed, never an answer. `weights`: the model's fingerprint when the caller has it."""
    if not path.is_file():
        return model
    try:
        session = onnx_session(path, threads)
    except Exception as e:  # a damaged graph costs speed, never an answer
        log.warning("%s cannot be read (%s); scoring with PyTorch", path, type(e).__name__)
        return model
    check_graph(session, model.card, weights or weights_fingerprint(model), path, model.source)
    if model.ood is None or len(session.get_outputs()) > 1:
        model.session, model.graph = session, path
    return model


def check_graph(session: Any, card: ModelCard, weights: str | None, file: Path, model: str) -> None:
    """An ONNX graph scores with its card's preprocessing and the folder's weights: made from other weights
    (check_made_from; `weights` None: the caller checks them), an input side other than the card's, or exported with
    other preprocessing than the card says (recorded in the graph's metadata; older graphs record none: the side
    alone) is refused naming the file, never scored in silence or met as ONNX Runtime's traceback."""
    if weights is not None:
        check_made_from(graph_fingerprint(session), weights, file, model)
    side, dims = card.preprocessing.input_size, session.get_inputs()[0].shape[2:]
    fix = "export it again (covidct export RUN), or restore the card the graph was exported with"
    if any(isinstance(d, int) and d != side for d in dims):
        raise ModelError(f"{file} takes images of {dims[0]}x{dims[1]} pixels and its card says {side}; {fix}")
    recorded = session.get_modelmeta().custom_metadata_map.get(PREPROCESSING_KEY)
    if recorded is None:
        return
    try:
        made_with = Preprocessing.from_dict(json.loads(recorded))
    except (ValueError, TypeError) as e:
        raise ModelError(f"{file}: its recorded preprocessing cannot be read ({e}); {fix}") from None
    if made_with != card.preprocessing:
        said = card.preprocessing.to_dict()
        changed = [k for k, v in made_with.to_dict().items() if said[k] != v]
        raise ModelError(f"{file} was exported with other preprocessing than its card's ({', '.join(changed)}); {fix}")


def graph_fingerprint(session: Any) -> str | None:
    """The fingerprint of the weights an ONNX graph was made from (its metadata), or None for a graph of an older
    covidct or of another tool."""
    return session.get_modelmeta().custom_metadata_map.get(WEIGHTS_KEY)


def check_made_from(made_from: str | None, weights: str, file: Path, model: str) -> None:
    """The one rule of trust in a model folder (a run or an export): every file in it (the ONNX graph, the model
    card, the detector) was made from exactly the weights the folder holds, by their fingerprint
    (weights_fingerprint). A file made from other weights, or a graph that records none, is refused naming it, never
    used in silence. (A card or detector written before covidct recorded fingerprints has none: its callers skip
    the check for it.)"""
    if made_from != weights:
        said = "records no weights" if made_from is None else "was made from other weights"
        raise ModelError(
            f"{file} {said} than the model in {model} holds: the files of a model folder must come from one model; "
            "export it again (covidct export RUN), or delete the file (a run's graph: it then scores with PyTorch)"
        )


def with_run_threshold(model: LoadedModel, run: RunDir, checkpoint: str | None = None) -> LoadedModel:
    """threshold.json is the run's one threshold record, read (and validated) whether or not the run has an export:
    an export made before `covidct threshold` still scores at the operating point the run now has (the export's
    card is rewritten too, but an export copied elsewhere before that keeps its own). A record chosen for another
    checkpoint (best vs last) does not apply."""
    record = run.threshold_record()
    checkpoint = checkpoint or run.checkpoint_path("best").name  # an export is made from the best checkpoint
    if record is not None and record.checkpoint in (None, checkpoint):
        model.card.threshold, model.card.threshold_chosen_on = record.threshold, record.where
        model.card.operating_point = record.summary()
    return model


def with_export_threshold(model: LoadedModel, folder: Path) -> LoadedModel:
    """An export inside its run folder (RUN/export) scores at the run's operating point: threshold.json is its one
    record, so an export card that disagrees with it is refused, not chosen (record_operating_point keeps both)."""
    run = RunDir(folder.parent)
    if folder.name != run.export_dir.name or not run.checkpoints_dir.is_dir():
        return model
    record = run.threshold_record()
    applies = record is not None and record.checkpoint in (None, run.checkpoint_path("best").name)
    if applies and abs(record.threshold - model.threshold) > 1e-12:
        raise ModelError(
            f"{folder / CARD_NAME}: threshold {model.threshold!r} disagrees with the run's operating point "
            f"{record.threshold!r} ({run.threshold_path}); a threshold has one source: choose it again with "
            f"covidct threshold {run.path}, or export again"
        )
    return model


def with_probe(model: LoadedModel, folder: Path) -> LoadedModel:
    """Attach the ImageNet probe saved in `folder` (a run's imagenet_probe/ or an export), if there is one."""
    from covidct.inference.imagenet_probe import load_probe

    return attach_probe(model, load_probe(folder, model.architecture))


def attach_probe(model: LoadedModel, probe: Any) -> LoadedModel:
    """`probe` (covidct.inference.imagenet_probe.ImageNetProbe, or None for none) blended into the model's scores
    from now on, and named in its card."""
    if probe is not None:
        probe.net = inference_ready(probe.net)
    model.card.imagenet_probe = None if probe is None else probe.card()
    model.probe = probe
    model._scoring = None  # folded again, with the probe, at the next score
    return model


def with_detector(model: LoadedModel, folder: Path, weights: str | None = None) -> LoadedModel:
    """Attach the out-of-distribution detector saved in `folder` (a run's ood/ or an export), if there is one and it
    was fitted for this architecture and these weights (`weights`: their fingerprint, when the model holds none of
    its own: an ONNX-only export); a detector of another model is refused with a clear error."""
    from covidct.ood.storage import load_detector

    detector = load_detector(folder)
    if detector is not None:
        detector.check_current(str(folder))
        made_from = detector.info.get("weights_sha256")
        if made_from is not None:  # a detector fitted before fingerprints were recorded says nothing
            weights = weights or weights_fingerprint(model)
            check_made_from(made_from, weights, folder / "ood.json", model.source)
        if detector.architecture != model.architecture:
            raise ModelError(
                f"the out-of-distribution detector in {folder} was fitted for {detector.architecture}, "
                f"not {model.architecture}; refit it: covidct ood fit RUN"
            )
        model.card.ood = detector.card()
    model.ood = detector
    return model


def load_trained(path: str | Path, threads: int | None = None, checkpoint: str = "best") -> LoadedModel:
    """An export folder (model.json with model.safetensors and/or model.onnx: ONNX Runtime scores when present,
    PyTorch explains), a .safetensors or .onnx file with model.json beside it, a run folder (its export/ when it
    has one and the best checkpoint is asked for, else the checkpoint) or a .ckpt file.
    threads: ONNX Runtime's intra-op threads (default: torch's)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} does not exist (give an export folder, a run folder or a model file)")
    if path.is_dir():
        run = RunDir(path)
        if run.checkpoints_dir.is_dir():
            if checkpoint == "best" and (run.export_dir / "model.safetensors").is_file():
                return with_run_threshold(load_trained(run.export_dir, threads), run)
            model = load_checkpoint(run.checkpoint(checkpoint), run)
            if checkpoint != "best":  # the detector and the graph were made from the best checkpoint's weights
                return model
            weights = weights_fingerprint(model)  # hashed once: the detector and the graph are checked against it
            return with_run_graph(with_detector(model, run.ood_dir, weights), run.scorer_graph_path, threads, weights)
        if (path / "model.safetensors").is_file():
            model = safetensors_model(path / "model.safetensors")
            if (path / "model.onnx").is_file():  # scores from ONNX Runtime (faster), Grad-CAM from PyTorch
                session = onnx_session(path / "model.onnx", threads)
                weights = model.card.weights_sha256 or weights_fingerprint(model)  # the card's was checked on load
                check_graph(session, model.card, weights, path / "model.onnx", str(path))
                if len(session.get_outputs()) > 1 or model.ood is None:  # older ONNX files lack the features
                    model.session, model.graph = session, path / "model.onnx"
            return with_export_threshold(model if model.session else model.built(), path)
        if (path / "model.onnx").is_file():
            return load_trained(path / "model.onnx", threads)
        raise ModelError(f"folder {path} holds no model.safetensors or model.onnx (export one: covidct export RUN)")
    if path.suffix == ".ckpt":
        return load_checkpoint(find_checkpoint(path))
    if path.suffix == ".safetensors":
        return safetensors_model(path).built()
    if path.suffix == ".onnx":
        card_path = path.with_name(CARD_NAME)
        if not card_path.is_file():
            raise ModelError(f"{path} has no {CARD_NAME} beside it (it holds the preprocessing and threshold)")
        session = onnx_session(path, threads)
        model = LoadedModel(ModelCard.read(card_path), session=session, source=str(path), graph=path)
        weights = graph_fingerprint(session)
        check_graph(session, model.card, model.card.weights_sha256, path, str(card_path))
        return with_detector(model, path.parent, weights) if len(session.get_outputs()) > 1 else model
    raise ModelError(f"model file {path} must be .safetensors, .onnx or .ckpt (with {CARD_NAME} beside the first two)")

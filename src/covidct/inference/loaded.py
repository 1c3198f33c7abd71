"""A trained model ready to score (LoadedModel): the network or an ONNX Runtime session, its preprocessing, its card
(covidct.runs.model_card.ModelCard), operating point, ImageNet probe and detector, and the ways it scores: a batch of
images with the detector's verdicts, the features collected for the batch shift test. covidct.inference.load makes
one from a file or folder."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from covidct.data import eval_transform
from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError
from covidct.inference.scorer import Scorer
from covidct.models.head import score_of
from covidct.ood.image_statistics import statistics_of
from covidct.runs.model_card import ModelCard
from covidct.runs.operating_point import checked_threshold
from covidct.verdict import ImageVerdict, judge_image

SCORE = "score"  # beside the image statistics of a collected batch: the model's score of each image
_COLLECTING = threading.local()  # LoadedModel.collecting: where this thread's scored batches leave their features


class NetworkAtFirstUse:
    """LoadedModel.module: the PyTorch network, built by the model's `network_from` at its first use when the model
    was loaded without it (an export scored by its ONNX graph: building the network imports timm, which imports
    torchvision and torch._dynamo, about a second of every predict and serve start for nothing: SPEED.md). A
    dataclass field whose default is a descriptor: __init__ sets it, reading it builds the network once."""

    _lock = threading.Lock()

    def __get__(self, model: LoadedModel | None, _owner: type | None = None) -> torch.nn.Module | None:
        if model is None:
            return None  # the field's default
        with self._lock:
            if model.__dict__.get("_module") is None and model.network_from is not None:
                model.__dict__["_module"], model.network_from = model.network_from(), None
        return model.__dict__.get("_module")

    def __set__(self, model: LoadedModel, module: torch.nn.Module | None) -> None:
        model.__dict__["_module"] = module


@dataclass(repr=False, eq=False)
class LoadedModel:
    """A model ready to score: PyTorch module or ONNX Runtime session, with its card. `network_from`: what builds
    `module` at its first use, when the model was loaded without it."""

    card: ModelCard
    module: torch.nn.Module | None = NetworkAtFirstUse()  # type: ignore[assignment]
    session: Any = None
    source: str = ""
    ood: Any = None  # the out-of-distribution detector (covidct.ood.detector.OODDetector), when the model has one
    probe: Any = None  # the ImageNet probe blended into the scores (covidct.inference.imagenet_probe), when it has one
    network_from: Callable[[], torch.nn.Module] | None = None
    graph: Path | None = None  # the ONNX file `session` was made from
    _one_thread: Any = field(default=None, repr=False)  # side_by_side's session, made at first use
    _transform: Any = field(default=None, repr=False)
    _scoring: Any = field(default=None, repr=False)  # (network, probe) with batch norm folded, made at first use

    def __repr__(self) -> str:  # not the dataclass's: that would build the network to show it
        return f"LoadedModel({self.architecture!r}, source={self.source!r})"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.card.preprocessing

    @property
    def threshold(self) -> float:
        return checked_threshold(self.card.threshold, f"{self.source}: the model card's 'threshold'")

    @property
    def architecture(self) -> str:
        return self.card.architecture

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)

    @property
    def model_id(self) -> str:
        return f"{self.card.architecture}:{self.card.source_run or Path(self.source).name}"

    @property
    def heat_map_explains(self) -> str:
        """What a Grad-CAM heat map of this model explains (inference/explain.py runs on `module`): the whole score,
        or, with an ImageNet probe blended in, the fine-tuned network's share of it alone."""
        if self.probe is None:
            return "the network that gives the score"
        own = f"{1 - self.probe.share:.0%}"
        return (
            f"the fine-tuned network alone ({own} of the score's log-odds; the ImageNet probe's share has no heat map)"
        )

    @property
    def transform(self) -> Any:
        if self._transform is None:
            self._transform = eval_transform(self.preprocessing)
        return self._transform

    def tensor(self, images: list[Image.Image]) -> torch.Tensor:
        return self.transform.batch(images)

    def built(self) -> LoadedModel:
        """This model with its network built now (when PyTorch scores it: weights that do not fit the architecture
        are refused on load, not at the first image)."""
        _ = self.module
        return self

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the PyTorch network (e.g. to "cuda" for scoring thousands of images); inputs follow it and
        outputs come back on the CPU. An ONNX Runtime session stays where it is."""
        if self.module is not None:
            self.module.to(device)
        if self.probe is not None:
            self.probe.to(device)
        self._scoring = None  # folded again, on the new device, at the next call
        return self

    def scoring(self) -> Scorer:
        """The scorer (inference/scorer.py: network and ImageNet probe as one module) as scoring runs it: copies
        with batch norm folded into the convolutions (inference/fold.py: the same logits to 1e-5, faster);
        `module` and `probe` keep their own weights for export, adaptation and Grad-CAM. Made at the first call:
        code that changes `module` afterwards must set `_scoring = None` to score the change."""
        if self._scoring is None:
            from covidct.inference.fold import fold_batch_norm

            size = self.card.preprocessing.input_size
            probe = None if self.probe is None else self.probe.on_network(fold_batch_norm(self.probe.net, size))
            self._scoring = Scorer(fold_batch_norm(self.module, size), probe)
        return self._scoring

    @torch.no_grad()
    def score_images(
        self, images: list[Image.Image], batch_size: int = 32, check: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probability of the positive class, out-of-distribution score) of each decoded image, in batches; the
        second is None when the model has no detector (or check=False). Higher ood score = less like the training
        images."""
        check = check and self.ood is not None
        out, ood = [], []
        for start in range(0, len(images), batch_size):
            batch_scores, batch_ood = self.score_batch(*self.prepared(images[start : start + batch_size], check))
            out.append(batch_scores.numpy())
            ood.append(batch_ood)
        scores = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        return scores, (np.concatenate(ood) if ood else np.zeros(0)) if check else None

    def prepared(self, images: list[Image.Image], check: bool = True) -> tuple[torch.Tensor, bool, dict[str, Any]]:
        """score_batch's arguments for decoded images: the preprocessed batch, whether the detector reads it, and
        the images' statistics it reads beside the features (none without a detector or when check is False).
        Thread-safe: predict prepares the next batch while this one is scored."""
        check = check and self.ood is not None
        return self.tensor(images), check, statistics_of(self.ood.image_halves, images) if check else {}

    @torch.no_grad()
    def score_batch(
        self, x: torch.Tensor, check: bool = True, statistics: dict[str, np.ndarray] | None = None
    ) -> tuple[torch.Tensor, Any]:
        """(probability of the positive class, out-of-distribution scores or None) of a preprocessed batch: the
        detector's features come from the same forward pass when the model has one and check is asked;
        `statistics`: the batch's images' statistics as decoded, by name, for the detector's other halves
        (`self.ood.image_halves`; ood/image_statistics.py)."""
        return self.judged(self.forward(x, check and self.ood is not None), statistics)

    def judged(
        self, forward: tuple[torch.Tensor, torch.Tensor | None], statistics: dict[str, np.ndarray] | None = None
    ) -> tuple[torch.Tensor, Any]:
        """score_batch's answer from the forward pass's (logits, features or None): the features, when there are,
        go to the detector and to a `collecting` block of this thread."""
        logits, features = forward
        scores = score_of(logits)
        if features is None:
            return scores, None
        sink = getattr(_COLLECTING, "sink", None)
        if sink is not None:  # the scores too: the shift test matches its reference to the batch's class mix
            sink.append((features.numpy(), {**(statistics or {}), SCORE: scores.numpy()}))
        return scores, self.ood.score(features.numpy(), **(statistics or {}))

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, features: bool = False, session: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and with `features` the detector's features from the same pass (ONNX: the graph's second
        output), of a preprocessed batch, on the CPU. `session`: the ONNX Runtime session to run (default the
        model's; several threads may run one session at once: side_by_side)."""
        session = session or self.session
        if session is not None:
            outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            if features and len(outputs) < 2:
                raise ModelError(
                    f"{self.source}: this ONNX file has no feature output for the out-of-distribution "
                    "check; export it again: covidct export RUN --format onnx"
                )
            return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]) if features else None
        scorer = self.scoring()
        x = x.to(next(scorer.network.parameters()).device)
        if not features:
            return scorer(x).cpu(), None
        logits, feats = scorer.with_features(x)
        return logits.cpu(), feats.cpu()

    def side_by_side(self) -> tuple[Any, int]:
        """(session, threads) for scoring batches in several threads at once: the model's graph in a session of
        one intra-op thread, run by as many threads as the model's own session has (each batch on one core: no
        thread waits for another inside a batch, while the next batches are decoded; 1.1x to 1.2x predict's rate
        on 2 cores, SPEED.md). (the model's session, 1) when it has one thread; (None, 1) when PyTorch scores."""
        if self.session is None or self.graph is None:
            return None, 1
        threads = self.session.get_session_options().intra_op_num_threads
        if threads <= 1:
            return self.session, 1
        if self._one_thread is None:
            one = onnx_session(self.graph, 1)
            if one.get_modelmeta().custom_metadata_map != self.session.get_modelmeta().custom_metadata_map:
                raise ModelError(f"{self.graph} changed since {self.source} was loaded; load the model again")
            self._one_thread = one
        return self._one_thread, threads

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[tuple[np.ndarray, dict[str, np.ndarray]]]]:
        """Within the block, every batch this thread scores with the detector leaves its features and image
        statistics in the list yielded: a batch shift test's input (batch_shift), from the same forward pass. Blocks
        nest: an inner block's batches reach the outer block's list too."""
        previous, sink = getattr(_COLLECTING, "sink", None), []
        _COLLECTING.sink = sink
        try:
            yield sink
        finally:
            _COLLECTING.sink = previous
            if previous is not None:  # a block inside another (a study inside a predict run): the outer gets it too
                previous.extend(sink)

    def batch_shift(self, outputs: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, Any]:
        """The batch shift test (covidct.ood.shift) of what `collecting` gathered, against the model's reference:
        the record every command writes ("tested": false, and why, when it could not run)."""
        from covidct.ood.image_statistics import IMAGE_STATISTICS
        from covidct.ood.shift import MIN_BATCH, shift_test, statistics_matrix

        n = sum(len(f) for f, _ in outputs)
        reference = None if self.ood is None else self.ood.reference
        if reference is None:
            why = (
                "this model's detector has no shift reference (fitted before the test existed, or on fewer than 20 "
                "validation images): covidct ood fit RUN"
            )
            return {"tested": False, "n": n, "why": why if self.ood is not None else "this model has no detector"}
        if n < MIN_BATCH:
            return {"tested": False, "n": n, "why": f"a batch of {n} images: the test needs at least {MIN_BATCH}"}
        if not all(set(IMAGE_STATISTICS) <= set(s) for _, s in outputs):
            return {"tested": False, "n": n, "why": "the image statistics were not computed for every batch"}
        features = np.concatenate([f for f, _ in outputs])
        statistics = np.concatenate([statistics_matrix(s) for _, s in outputs])
        scored = None
        if all(SCORE in s for _, s in outputs):
            scored = (np.concatenate([s[SCORE] for _, s in outputs]), self.threshold)
        return {"tested": True, **shift_test(reference, features, statistics, scored)}

    def ood_flags(self, ood_scores: np.ndarray | None) -> np.ndarray | None:
        return None if ood_scores is None or self.ood is None else self.ood.flags(ood_scores)

    def verdict(
        self, score: float, ood_score: float | None, unseen: str | None, threshold: float | None = None
    ) -> ImageVerdict:
        """The verdict (covidct.verdict) on one image scored by this model: its label at `threshold` (default: the
        model's operating point), and with a detector its flag and reason (`unseen`: unseen_acquisition's)."""
        flags = self.ood_flags(None if ood_score is None else np.array([ood_score]))
        ood = None if flags is None else (float(ood_score), bool(flags[0]))
        t = self.threshold if threshold is None else threshold
        return judge_image(score, t, self.class_names, ood, unseen)

    def unseen_acquisition(self, acquisition: Any) -> str | None:
        """Why an input's acquisition (covidct.ood.acquisition.Acquisition) is outside what the model was trained
        on, or None (also when the model has no detector, or one fitted before the acquisition record)."""
        return None if self.ood is None else self.ood.unseen_acquisition(acquisition)


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session of `path` on the CPU with `threads` intra-op threads (default: torch's). Its threads
    sleep when idle rather than spin: predict decodes the next images on the same cores (8% faster end to end,
    SPEED.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

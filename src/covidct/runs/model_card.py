"""The model card: the one typed record that travels with a trained model (as timm's PretrainedCfg travels with its
weights). A run folder's loaded model, its export's model.json and a served model's GET /api/v1/model all hold this
record; `ModelCard.read` is its one reader and `ModelCard.write` its one writer, and both validate it: a threshold
that is not a finite number in [0, 1], a field that is missing or unknown, is refused naming the file and field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from covidct import DISCLAIMER, __version__
from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError
from covidct.fileio import read_json, write_json
from covidct.runs import RunDir
from covidct.runs.operating_point import checked_threshold
from covidct.runs.records import SummaryRecord

FORMAT = "covidct-model/1"
CARD_NAME = "model.json"
REQUIRED = ("format", "architecture", "preprocessing", "class_names", "threshold")
# Written for readers of the file (derived from the fields, never read back)
DERIVED = ("positive_class", "input", "output")
FIX = "export it again: covidct export RUN"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ModelCard:
    """Everything needed to use the weights, and what is known about how good they are and where they were (and
    were not) validated. threshold: the operating point (None only while `covidct threshold` chooses a new one);
    the nested records are owned by their own modules (the detector's card, the ImageNet probe's, the adaptation)."""

    architecture: str
    preprocessing: Preprocessing
    class_names: list[str]
    threshold: float | None
    threshold_chosen_on: str | None = None
    operating_point: dict[str, Any] | None = None  # by what rule, on what and when (OperatingPoint.summary)
    source_run: str | None = None
    checkpoint: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    adaptation: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    validated_on: dict[str, Any] | None = None
    imagenet_probe: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    # sha256 of the weights (network and ImageNet probe: load.weights_fingerprint) that every file of the model's
    # folder was made from: the graph, the detector and this card are tied to them and checked on load
    weights_sha256: str | None = None
    covidct_version: str = __version__
    exported: str = field(default_factory=_now)
    intended_use: str = DISCLAIMER
    format: str = FORMAT

    @property
    def positive_class(self) -> str:
        return self.class_names[1]

    def to_dict(self) -> dict[str, Any]:
        """The card as model.json and the API give it (JSON values): absent records left out, the derived fields
        added."""
        size = self.preprocessing.input_size
        card = {k: v for k, v in asdict(self).items() if v is not None or k in REQUIRED}
        card["preprocessing"] = self.preprocessing.to_dict()
        card["positive_class"] = self.positive_class
        card["input"] = {
            "name": "image",
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "note": "RGB in [0, 1], then (x - mean) / std",
        }
        card["output"] = {
            "name": "logits",
            "shape": ["batch", 2],
            "score": "softmax(logits)[:, 1] = probability of class 1",
        }
        return json.loads(json.dumps(card))  # as a reader of the file sees it: lists, not tuples

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelCard:
        """A card as read from `where`, every field checked (see the module's docstring)."""
        if not isinstance(data, dict) or not isinstance(data.get("architecture"), str):
            raise ModelError(f"{where} is not a covidct model card (no 'architecture'); {FIX}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(DERIVED))
        missing = [k for k in REQUIRED if k not in data]
        if unknown or missing:
            what = f"unknown field(s) {unknown}" if unknown else f"no {', '.join(repr(k) for k in missing)}"
            raise ModelError(f"{where} has {what}; {FIX}")
        if data["format"] != FORMAT:
            raise ModelError(f"{where}: 'format' must be {FORMAT}, got {data['format']!r}; {FIX}")
        names = data["class_names"]
        if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
            raise ModelError(f"{where}: 'class_names' must be two names (negative, positive), got {names!r}; {FIX}")
        if data.get("positive_class", names[1]) != names[1]:
            raise ModelError(f"{where}: 'positive_class' {data['positive_class']!r} is not class_names[1]; {FIX}")
        try:
            pre = Preprocessing.from_dict(data["preprocessing"])
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ModelError(f"{where}: 'preprocessing' cannot be read ({type(e).__name__}: {e}); {FIX}") from None
        threshold = checked_threshold(data["threshold"], f"{where}: 'threshold'")
        check_one_threshold(threshold, data.get("operating_point"), where)
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "preprocessing": pre, "class_names": list(names), "threshold": threshold})

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """An export's model.json: a card that cannot be read or holds no usable operating point is refused by
        name, never scored at a default."""
        return cls.from_dict(read_json(path, FIX), str(path))

    def write(self, folder: Path) -> Path:
        """model.json in `folder`, checked by reading it back as any loader will."""
        card = self.to_dict()
        ModelCard.from_dict(card, f"the card written to {folder}")
        return write_json(folder / CARD_NAME, card)


def check_one_threshold(threshold: float, point: Any, where: str) -> None:
    """A card's threshold and its operating point's record (OperatingPoint.summary) are one value: a copy edited
    alone is refused, not chosen. A record of an older covidct, without the threshold, says nothing."""
    if not (isinstance(point, dict) and "threshold" in point):
        return
    recorded = checked_threshold(point["threshold"], f"{where}: 'operating_point.threshold'")
    if abs(recorded - threshold) > 1e-12:
        raise ModelError(
            f"{where}: 'threshold' {threshold!r} disagrees with its operating point's record ({recorded!r}, "
            f"chosen by {point.get('rule')!r} on {point.get('chosen_on')!r}); a threshold has one source: "
            "choose it again with covidct threshold RUN (then export again), or pass --threshold"
        )


def run_records(run: RunDir) -> dict[str, Any]:
    """What a run folder adds to its model's card: where it came from, what it was trained on, its test metrics and
    every set it was evaluated on."""
    out: dict[str, Any] = {"source_run": run.name}
    s = run.summary()
    if s:
        out["training_data"] = {"source": s.get("data_source"), "counts": s.get("counts")}
        if s.get("sources"):
            out["training_data"]["sources"] = s["sources"]
        out["training"] = SummaryRecord.model_validate(s).training()
        if s.get("distilled_from"):  # what the network learned from besides the labels
            out["training"]["distilled_from"] = [str(t) for t in s["distilled_from"]]
        if s.get("adaptation"):  # covidct adapt: where the head was refitted and how it was validated there
            out["adaptation"] = s["adaptation"]
    m = run.evaluation("test")
    if m is not None:
        keys = ("accuracy", "sensitivity", "specificity", "auc")
        ci95 = {k: m.get("ci95", {}).get(k) for k in keys}
        out["metrics"] = {"split": "test", "n": m["n"], **{k: m[k] for k in keys}, "ci95": ci95}
    validated = {
        name: {"n": e["n"], "auc": e.get("auc"), "accuracy": e.get("accuracy")} for name, e in run.evaluations().items()
    }
    if validated:
        out["validated_on"] = validated
    return out

"""covidct's settings, each declared once, the command line built from them: a training run (TrainConfig, saved as
YAML beside every run's outputs), self-supervised pretraining (PretrainConfig), an evaluation (EvalConfig), the input
limits (limits.py) and adaptation's choices. The shared machinery is in base.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from covidct.config.base import (  # noqa: F401 (the package's names)
    CROPS,
    DEFAULT_DATA_DIR,
    DEFAULT_MODEL,
    INPUT_SIZES,
    INTENSITIES,
    MONITORS,
    PRECISIONS,
    Settings,
    check_choices,
    resolve_data_dir,
    setting,
)
from covidct.config.limits import INPUT_LIMITS, InputLimits, active_limits  # noqa: F401 (the package's names)
from covidct.errors import ConfigError


def _positive(v: Any) -> bool:
    return v > 0


def _at_least_one(v: Any) -> bool:
    return v >= 1


# The allowed range of each numeric training setting: (test, what the error message says is allowed).
TRAIN_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (_positive, "> 0"),
    "batch_size": (_positive, "> 0"),
    "lr": (_positive, "> 0"),
    "backbone_lr_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "devices": (_at_least_one, ">= 1"),
    "num_nodes": (_at_least_one, ">= 1"),
    "checkpoint_every": (_at_least_one, ">= 1"),
    "input_size": (
        lambda v: v is None or INPUT_SIZES[0] <= v <= INPUT_SIZES[1],
        f"between {INPUT_SIZES[0]} and {INPUT_SIZES[1]} pixels",
    ),
    "patience": (_at_least_one, ">= 1"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "samples_per_epoch": (lambda v: v is None or v >= 1, ">= 1"),
    "teacher_epochs": (lambda v: v is None or v >= 1, ">= 1"),
    "mixup": (lambda v: 0 <= v <= 10, "between 0 and 10"),
    "freeze_blocks": (lambda v: v >= 0, ">= 0"),
    "imagenet_probe": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "distill_weight": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


@dataclass
class TrainConfig(Settings):
    """Everything that defines a training run, declared once: defaults are the shipped recipe, and the command
    line (cli/train.py) is built from these fields. A new setting is one field here."""

    retired: ClassVar[dict[str, tuple[Any, str]]] = {
        "domain_adversarial": (0.0, "the domain-adversarial head: benchmarks/GENERALIZATION.md measured no gain"),
    }
    # "linear_probe" was LP-FT's name, easily taken for the ImageNet probe (imagenet_probe): saved configs still read
    renamed: ClassVar[dict[str, str]] = {"linear_probe": "lp_ft"}

    # ---- data
    model: str = setting(DEFAULT_MODEL, "backbone; see: covidct models")
    data_dir: str = setting(
        DEFAULT_DATA_DIR, "dataset folder of a single-source run (default: $COVIDCT_DATA_DIR, else data/covid-ct)"
    )
    data_csv: str | None = setting(None, "a CSV of path,label[,split][,group][,source] instead of a folder")
    sources: list[str] = setting(
        help="train on this source (repeat for several): a name from `covidct data sources` (looked up under "
        "$COVIDCT_DATA_ROOT, default data/), NAME=PATH, or a folder/CSV; overrides --data-dir",
        flag="source",
        factory=list,
    )
    source_balance: bool = setting(True, "with several sources, each weighs the same per epoch (weighted sampler)")
    samples_per_epoch: int | None = setting(None, "images drawn per training epoch (default: the split's size)")
    # ---- model and weights
    pretrained: bool = setting(True, "start from ImageNet weights (--no-pretrained: random, only when asked)")
    weights: str | None = setting(None, "local ImageNet weight file (.pth or .safetensors) for the backbone")
    init: str | None = setting(
        None, "start the backbone from a `covidct pretrain` run folder (self-supervised on CT) instead of ImageNet"
    )
    freeze_blocks: int = setting(0, "keep the stem and the first N blocks of the backbone frozen")
    lp_ft: bool = setting(
        False,
        "LP-FT: fit the new head by logistic regression on the frozen ImageNet "
        "features of the training images before fine-tuning the whole network (was linear_probe)",
    )
    imagenet_probe: float = setting(
        0.25,
        "share of the log-odds given to a logistic regression on the frozen "
        "starting network's features, fitted at the end of training (0: none)",
    )
    fold_probe: bool = setting(
        True,
        "fold the ImageNet probe into the network: train the network and its probe first (the teacher, in "
        "RUN_DIR-teacher), then one network distilled from them, the model kept: one backbone per image, the "
        "teacher's training added (no probe to fold: an ordinary run)",
    )
    teacher_epochs: int | None = setting(
        6, "with fold_probe: the teacher's epochs, its own schedule over them, at most --epochs (unset: --epochs)"
    )
    teachers: list[str] = setting(
        help="knowledge distillation: trained models (run or export folders; repeat for several) whose mean score "
        "on the same augmented view the network learns beside the labels (Hinton et al. 2015; Beyer et al. 2022)",
        flag="teacher",
        factory=list,
    )
    distill_weight: float = setting(0.75, "with teachers: the distillation loss's share of the loss (the rest: labels)")
    # ---- optimisation
    epochs: int = setting(12, "maximum epochs")
    batch_size: int = setting(32, "images per step (per process)")
    lr: float = setting(1e-3, "peak learning rate of AdamW")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    warmup_epochs: int = setting(1, "linear warm-up epochs before the cosine decay")
    backbone_lr_scale: float = setting(1.0, "the pretrained backbone's lr = lr x this; the new head's = lr")
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy")
    patience: int = setting(12, "early-stopping patience in epochs")
    mixup: float = setting(
        0.0,
        "> 0: mixup within each batch, weights ~ Beta(alpha, alpha) with this alpha (0.2-0.4 "
        "is usual); with balanced sources many pairs cross sources",
    )
    ema_decay: float = setting(0.0, "> 0: validate and checkpoint an exponential moving average of the weights")
    operating_point: str = setting(
        "youden-bootstrap",
        "decision threshold stored at the end of training, chosen on the validation split: youden-bootstrap "
        "(Youden's J, the median over 200 bootstrap resamples), youden (one pick) or 0.5",
        ("youden-bootstrap", "youden", "0.5"),
    )
    ood: bool = setting(
        True,
        "fit the out-of-distribution detector on the training images at the end (threshold "
        "on validation); see covidct ood",
    )
    onnx: bool = setting(
        True,
        "write the best model's scorer as an ONNX graph checked against PyTorch at the end (checkpoints/best.onnx): "
        "predict and serve run it with ONNX Runtime, 1.7-2x faster",
    )
    monitor: str = setting(
        "val_auc",
        "best-checkpoint and early-stopping criterion (val_auc_mean: mean of the validation sources' AUCs; last: "
        "no choice and no early stop, the final epoch is the model)",
        tuple(MONITORS),
    )
    seed: int = setting(42, "seed of everything (weights of the head, splits, augmentation, sampling)")
    # ---- the image pipeline (the default recipe was chosen on validation, see benchmarks/)
    grayscale: bool = setting(True, "every image to grey first (removes colour mode as a shortcut)")
    input_size: int | None = setting(None, "side of the model's input in pixels (default: the backbone's)")
    augment: str = setting(
        "ct",
        "study: crop+flip; ct: + affine, brightness/contrast; robust: ct + blur, noise, contrast, JPEG re-encoding",
        ("study", "ct", "robust"),
    )
    crop: str = setting(
        "none",
        "crop every image to the body or the lung fields first (lung-mask: and black out what lies outside the lungs)",
        CROPS,
    )
    intensity: str = setting(
        "none",
        "histogram equalisation of every image: global (equalize) or adaptive, contrast-limited (clahe)",
        INTENSITIES,
    )
    # ---- speed and machines
    precision: str = setting("auto", "auto: bf16-mixed on CPUs with AMX/AVX512-BF16 and on GPUs, else 32", PRECISIONS)
    channels_last: bool = setting(True, "channels-last memory layout")
    fp32_slow_layers: bool = setting(
        True, "under bf16 on CPU, keep the depthwise convs whose bf16 backward is slow in fp32"
    )
    num_workers: int = setting(-1, "data loader workers (-1: min(2, cores))")
    cache_images: bool = setting(True, "decode every image once, keep it in memory", flag="cache")
    cache_dir: str | None = setting(None, "keep decoded images here across runs (keyed by file content)")
    accelerator: str = setting("auto", "auto, cpu or gpu")
    devices: int = setting(1, "devices (GPUs, or CPU processes) per node; > 1: DDP")
    num_nodes: int = setting(1, "machines taking part; see the docs, how-to 'Long runs'")
    tensorboard: bool = setting(True, "TensorBoard logs in RUN_DIR/tensorboard")
    checkpoint_every: int = setting(
        1,
        "write checkpoints/last.ckpt (for --resume) every N epochs; large models on "
        "fast GPUs spend more time writing it than training",
    )
    out: str = setting("runs", "parent folder of run folders")
    extra: dict[str, Any] = setting(factory=dict, cli=False)

    def __post_init__(self) -> None:
        for name, (ok, allowed) in TRAIN_RANGES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name} must be {allowed}, got {value!r}")
        check_choices(self)
        self.sources = [str(s) for s in (self.sources or [])]
        self.teachers = [str(t) for t in (self.teachers or [])]

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]

    @property
    def has_probe(self) -> bool:
        """Whether a run of these settings gets an ImageNet probe: a share of it, and a starting network with weights
        (ImageNet, --weights or --init; a network from random weights has no features worth probing)."""
        return self.imagenet_probe > 0 and bool(self.pretrained or self.weights or self.init)


PRETRAIN_METHODS = ("simclr", "moco", "byol")


@dataclass
class PretrainConfig(Settings):
    """Self-supervised pretraining on unlabelled CT (lightly's heads and losses, Lightning's loop): the settings,
    declared once; `covidct pretrain` is built from them. Images: the training (and with include_val, validation)
    splits of the sources, never a test split."""

    model: str = setting(DEFAULT_MODEL, "backbone; see: covidct models")
    sources: list[str] = setting(
        help="pretrain on this source's images (repeat for several); see covidct data sources",
        flag="source",
        factory=list,
    )
    data_dir: str = setting(DEFAULT_DATA_DIR, "dataset folder when no --source is given")
    data_csv: str | None = setting(None, "a CSV of path,label[,split] instead of a folder")
    include_val: bool = setting(False, "also use the validation splits' images (never the test splits')")
    method: str = setting(
        "simclr", "simclr (NT-Xent), moco (v2, momentum encoder + memory bank) or byol", PRETRAIN_METHODS
    )
    pretrained: bool = setting(True, "start from ImageNet weights (then CT, as Self-Trans did)")
    epochs: int = setting(20, "epochs")
    batch_size: int = setting(64, "images per step (each gives two views)")
    lr: float = setting(1e-3, "peak learning rate of AdamW (warm-up then cosine)")
    weight_decay: float = setting(1e-6, "AdamW weight decay")
    input_size: int = setting(128, "side of the views in pixels")
    temperature: float = setting(0.2, "NT-Xent temperature (simclr, moco)")
    memory_bank: int = setting(4096, "moco: negatives kept in the memory bank")
    grayscale: bool = setting(True, "every image to grey first")
    crop: str = setting(
        "none",
        "crop every image to the body or the lung fields first (lung-mask: and black out what lies outside the lungs)",
        CROPS,
    )
    seed: int = setting(42, "seed of everything")
    precision: str = setting("auto", "auto: bf16-mixed where it pays, else 32", PRECISIONS)
    accelerator: str = setting("auto", "auto, cpu or gpu")
    devices: int = setting(1, "devices per node; > 1: DDP")
    num_workers: int = setting(-1, "data loader workers (-1: min(2, cores))")
    out: str = setting("runs", "parent folder of run folders")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr", "input_size", "devices"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        check_choices(self)
        self.sources = [str(s) for s in (self.sources or [])]


@dataclass
class EvalConfig(Settings):
    """The settings of an evaluation (`covidct evaluate`, and train's --evaluate): declared once, the command's flags
    built from them as train's are from TrainConfig; evaluation.evaluate.evaluate_run takes them."""

    split: str = setting("test", "train, val or test")
    on: str | None = setting(
        None,
        "an external labelled set instead of a split: a source name, NAME=PATH, a folder "
        "or a CSV (all its images; one class allowed); written to eval-<name>/",
    )
    # its flag takes an optional value (--per-group [AGGREGATION]): built by hand in cli/evaluate.py
    per_group: str | None = setting(None, "score each group (patient) as one, its slices aggregated so", cli=False)
    tta: bool = setting(False, "average each image's score with its left-right mirror's")
    checkpoint: str = setting("best", "which checkpoint of the run", ("best", "last"))
    data_dir: str | None = setting(None, "override the data folder recorded in the run's config")
    threshold: float | None = setting(None, "decision threshold (default: the model's)")
    out_dir: str | None = setting(None, "output folder (default RUN_DIR/eval-SPLIT)", flag="out")
    calibrate: bool = setting(False, "fit temperature scaling on val; report ECE before and after")
    n_bootstrap: int = setting(2000, "bootstrap resamples for the intervals (0: none)", flag="bootstrap")
    min_sensitivity: float = setting(0.95, "the 'sensitivity at least S' operating point (chosen on val)")
    seed: int = setting(0, "seed of the bootstrap", cli=False)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be >= 0, got {self.n_bootstrap!r}")
        if not 0 < self.min_sensitivity <= 1:
            raise ConfigError(f"min_sensitivity must be in (0, 1], got {self.min_sensitivity!r}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold!r}")


EVAL_DEFAULTS = EvalConfig()  # the one place the evaluation defaults are read from (function defaults too)


# covidct adapt: how a model is adapted to a site (here, not in adaptation/: the command line is built from
# them, and importing the adaptation code would cost every command two seconds)
DEFAULT_DRAWS = 5
STRATEGY_TEXT = {
    "head": "logistic regression on the source model's frozen features",
    "lp-ft": "the same regression (a linear probe), then the last two stages and head fine-tuned (LP-FT)",
}
STRATEGIES = tuple(STRATEGY_TEXT)
DEFAULT_STRATEGY = "lp-ft"  # above the head alone at every k COVID-CT -> SARS-CoV-2, level the other way: ADAPTATION.md
IMAGENET_STRATEGIES = ("head",)  # the ImageNet baseline's default: LP-FT from ImageNet too doubles a curve's time
DEFAULT_KS = (1, 2, 5, 10, 20)


@dataclass(frozen=True)
class CurvePlan:
    """What a learning curve draws: k groups per class for each k of `ks`, `draws` times each (seeded by (seed, k,
    draw)), and which strategies adapt from the model and from ImageNet weights. Checked when made.

    Example::

        plan = CurvePlan(ks=(2, 5, 10), draws=5)
    """

    ks: tuple[int, ...] = DEFAULT_KS
    draws: int = DEFAULT_DRAWS
    seed: int = 0
    strategies: tuple[str, ...] = STRATEGIES
    imagenet_strategies: tuple[str, ...] = IMAGENET_STRATEGIES

    def __post_init__(self) -> None:
        for name in ("ks", "strategies", "imagenet_strategies"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.ks or not all(isinstance(k, int) and k >= 1 for k in self.ks):
            raise ConfigError(f"the curve's ks must be whole numbers of patients per class >= 1, got {self.ks!r}")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise ConfigError(f"the curve's draws must be a whole number >= 1, got {self.draws!r}")
        unknown = [s for s in self.strategies + self.imagenet_strategies if s not in STRATEGY_TEXT]
        if unknown or not self.strategies:
            raise ConfigError(f"the curve's strategies must be some of {list(STRATEGY_TEXT)}, got {unknown or '()'}")


API_KEY_ENV = "COVIDCT_API_KEY"  # serve's API keys when none are given (comma-separated)


@dataclass(frozen=True)
class ServeSettings:
    """What `covidct serve` is asked besides the model and the address: API keys (none: $COVIDCT_API_KEY, else
    open), the input limits, the batch shift test's window (the last N images scored) and how long concurrent
    images are gathered into one batch (0: each request scored alone, one per core). Checked when made.

    Example::

        settings = ServeSettings(api_key=["site-a"], shift_window=100)
    """

    api_key: str | list[str] | None = None
    limits: InputLimits = INPUT_LIMITS
    shift_window: int = 200
    batch_wait_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.shift_window < 10:
            raise ConfigError(
                f"--shift-window must be at least 10 images (the shift test's smallest batch), got {self.shift_window}"
            )
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"--batch-wait-ms must be between 0 and 1000 milliseconds, got {self.batch_wait_ms}")

    def keys(self) -> list[str]:
        """The API keys: those given, else $COVIDCT_API_KEY's (comma-separated); none: no key asked."""
        import os

        given = [self.api_key] if isinstance(self.api_key, str) else list(self.api_key or [])
        return given or [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]

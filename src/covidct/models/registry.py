"""The backbone registry: one decorated builder per backbone, declaring where its ImageNet weights come from,
where its classification head is and its preprocessing (as timm's register_model + per-model _cfg).

A new backbone is one function in backbones.py, declared by its spec (timm's PretrainedCfg):

    @register_backbone(BackboneSpec("my_net", weights="where the ImageNet weights come from", head="fc",
                                    stages=("stem", "stage1", "stage2", "stage3")))
    def my_net(pretrained: bool, weights: str | None) -> nn.Module:
        ...  # build, load weights; the registry replaces the head with a 2-class one

`stages` says where the network's stages are (as timm's feature_info does): the module paths in order, or a rule
that finds them in a built network (`children_of("blocks")`); the detector's features and adaptation's tail read
them from the built model (`backbone_stages`). Left out, the usual names are looked for (blocks, features,
layer1-4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError

HEAD_ATTR = "covidct_head"  # set on every built model: the dotted path of its 2-class head
STAGES_ATTR = "covidct_stages"  # set on every built model: the dotted paths of its stages, in order
StageRule = Callable[[nn.Module], list[str]]


def children_of(path: str, with_parameters: bool = False) -> StageRule:
    """The stages are the children of the container at `path` (those holding parameters, if asked)."""

    def rule(model: nn.Module) -> list[str]:
        container = model.get_submodule(path)
        return [
            f"{path}.{name}"
            for name, child in container.named_children()
            if not with_parameters or any(True for _ in child.parameters())
        ]

    return rule


RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def usual_stages(model: nn.Module) -> list[str]:
    """The usual names, for a network whose builder declared none: timm's `blocks`, torchvision's `features` (VGG,
    DenseNet: the children that hold parameters) or ResNet's layer1-4."""
    if isinstance(getattr(model, "blocks", None), nn.Sequential):
        return children_of("blocks")(model)
    if isinstance(getattr(model, "features", None), nn.Sequential):
        return children_of("features", with_parameters=True)(model)
    if all(isinstance(getattr(model, name, None), nn.Module) for name in RESNET_STAGES):
        return list(RESNET_STAGES)
    raise ModelError(
        f"{type(model).__name__}: no stages to read features from; declare them where the backbone is registered "
        "(BackboneSpec(..., stages=...)) or name them blocks, features or layer1-4"
    )


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The network's stages in order: those its backbone declared when it was built (create_model), else the usual
    names. What the out-of-distribution detector's features and adaptation's tail read."""
    paths = getattr(model, STAGES_ATTR, None) or usual_stages(model)
    return [model.get_submodule(p) for p in paths]


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's declaration (as timm's PretrainedCfg): where its ImageNet weights come from, its head, its
    preprocessing and its stages; `build` is the decorated builder, set by register_backbone."""

    name: str
    weights: str  # where the ImageNet weights come from, for `covidct models` and the docs
    head: str  # dotted path of the final nn.Linear, replaced by a 2-class one ("" when the builder sets it)
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing.for_input(224))
    notes: str = ""
    prefix: bool = False  # a family addressed as "<name>:<arch>" (timm:<name>)
    stages: tuple[str, ...] | StageRule | None = None  # where its stages are; None: the usual names
    build: Callable[..., nn.Module] | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """A decorator that registers its builder under `spec` (create_model builds it by spec.name)."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} registered twice")
        _REGISTRY[spec.name] = replace(spec, build=fn)
        return fn

    return decorate


def backbone_specs() -> list[BackboneSpec]:
    """Every registered backbone (the built-in ones register when the covidct.models package is imported)."""
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    specs = {s.name: s for s in backbone_specs()}
    if name in specs and not specs[name].prefix:
        return specs[name]
    family, _, arch = name.partition(":")
    if arch and family in specs and specs[family].prefix:
        return specs[family]
    raise ModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def available_models() -> list[str]:
    return [f"{s.name}:<name>" if s.prefix else s.name for s in backbone_specs()]


def replace_head(model: nn.Module, path: str) -> None:
    """The final Linear at `path` becomes a 2-class one (non-COVID = 0, COVID = 1)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    new = nn.Linear(old.in_features, 2)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def create_model(
    name: str, pretrained: bool = True, weights: str | Path | None = None
) -> tuple[nn.Module, Preprocessing]:
    """Build backbone `name` with a 2-class head; returns the model and its preprocessing."""
    spec = get_spec(name)
    weights = str(weights) if weights else None
    if spec.prefix:
        model, pre = spec.build(name.partition(":")[2], pretrained, weights)
    else:
        model, pre = spec.build(pretrained, weights), spec.preprocessing
    if spec.head:
        replace_head(model, spec.head)
        setattr(model, HEAD_ATTR, spec.head)
    setattr(model, STAGES_ATTR, declared_stages(model, spec))
    return model, pre


def declared_stages(model: nn.Module, spec: BackboneSpec) -> list[str]:
    """The dotted paths of a built model's stages, as its spec declares them; each checked to exist."""
    if spec.stages is None:
        paths = usual_stages(model)
    else:
        paths = list(spec.stages) if isinstance(spec.stages, tuple) else spec.stages(model)
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ModelError(f"backbone {spec.name} declares a stage {path!r} that its network does not have") from None
    return paths


def head_module(model: nn.Module) -> nn.Module | None:
    """The model's 2-class head (its input is the pooled features), or None where it cannot be found."""
    path = getattr(model, HEAD_ATTR, None)
    if path:
        return model.get_submodule(path)
    get = getattr(model, "get_classifier", None)  # timm models
    return get() if callable(get) else None


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the new classification head (trained from scratch, so they may get a larger lr)."""
    head = head_module(model)
    return list(head.parameters()) if head is not None else []

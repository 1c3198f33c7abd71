"""Backbones built by name through one factory (registry.create_model), each with a 2-class head and its own
preprocessing. The built-in backbones are in backbones.py, one registered function each."""

from covidct.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, resize_for
from covidct.models.registry import (
    BackboneSpec,
    available_models,
    backbone_specs,
    backbone_stages,
    create_model,
    get_spec,
    head_module,
    head_parameters,
    register_backbone,
)
from covidct.models.weights import load_weight_file

# The built-in backbones register themselves on import (one decorated function each), after the registry exists.
from covidct.models import backbones  # noqa: F401  isort: skip

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "Preprocessing",
    "available_models",
    "backbone_specs",
    "backbone_stages",
    "create_model",
    "get_spec",
    "head_module",
    "head_parameters",
    "load_weight_file",
    "register_backbone",
    "resize_for",
]

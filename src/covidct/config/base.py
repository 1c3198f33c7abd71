"""What every settings class shares: a field declared once with its default, help and choices (`setting`), read
from and written to YAML and dicts (`Settings`), and the names of the choices settings may take."""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from covidct.errors import ConfigError

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_DATA_DIR = "data/covid-ct"
# val_auc_mean: the mean over validation sources of each source's AUC (= val_auc with one source); last: no choice,
# the final epoch of a fixed schedule is the model (a run whose validation images are in its training split)
MONITORS = {"val_acc": "max", "val_auc": "max", "val_auc_mean": "max", "val_loss": "min", "last": "max"}
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
CROPS = ("none", "body", "lung", "lung-mask")  # data/crop.py says what each does
INTENSITIES = ("none", "equalize", "clahe")  # data/transforms.py says what each does
INPUT_SIZES = (32, 1024)  # a model's input side in pixels, the least and the most


class _NoAliasLoader(yaml.SafeLoader):
    """yaml's SafeLoader (no Python objects) that refuses aliases: `*name` repeats what `&name` marked, and aliases
    of aliases expand to billions of values ("billion laughs") once anything walks the result (a check, a copy, a
    dump). covidct writes none, and a config is written out in full."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}: write the value out instead", event.start_mark
            )
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The value of a YAML file, read safely and without aliases (_NoAliasLoader): every YAML file covidct reads
    (a config given to train, a run folder's config.yaml) is read here. ConfigError names the file and what is
    wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} cannot be read as YAML: {e}") from None


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $COVIDCT_DATA_DIR, else data/covid-ct."""
    if data_dir:
        return Path(data_dir)
    return Path(os.environ.get("COVIDCT_DATA_DIR") or DEFAULT_DATA_DIR)


def check_choices(config: Any) -> None:
    """Every field declared with choices holds one of them."""
    for f in dataclasses.fields(config):
        allowed = f.metadata.get("choices")
        if allowed and getattr(config, f.name) not in allowed:
            raise ConfigError(f"{f.name} must be one of {allowed}, got {getattr(config, f.name)!r}")


def setting(
    default: Any = None,
    help: str = "",
    choices: tuple | None = None,
    flag: str | None = None,
    factory: Any = None,
    cli: bool = True,
) -> Any:
    """A field of TrainConfig with what the command line needs: its help text, allowed values and flag name
    (default: --field-name; booleans get --x/--no-x). cli=False: a setting of the file only."""
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def plain_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(value: Any) -> tuple[bool, Any]:
    fits = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return fits, int(value) if fits else value


def _float(value: Any) -> tuple[bool, Any]:
    if isinstance(value, str):  # `lr: 1e-3` is a string to YAML 1.1
        try:
            return True, float(value)
        except ValueError:
            return False, value
    fits = plain_number(value)
    return fits, float(value) if fits else value


def _str(value: Any) -> tuple[bool, Any]:  # `precision: 32` or `out: 2026` in YAML: a number where a name is meant
    plain = isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) or plain, str(value) if plain else value


# Each plain field type: (whether a value fits it, the value as that type)
_SCALARS: dict[Any, Callable[[Any], tuple[bool, Any]]] = {
    type(None): lambda v: (v is None, v),
    bool: lambda v: (isinstance(v, bool), v),
    int: _int,
    float: _float,
    str: _str,
}


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` fits the field type `hint`, the value as that type): a YAML file or a notebook gives plain
    values, so numbers become int or float (numpy's too), `lr: 1e-3` a float, and a value of the wrong kind (a word
    for a number, one path for a list) does not fit. A type this does not know fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return next((t for t in (_typed(value, option) for option in args) if t[0]), (False, value))
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if origin in (list, tuple, dict) and value is None:  # `sources:` left empty in a YAML file: none
        return True, origin()
    if origin in (list, tuple):
        items = [_typed(v, args[0]) for v in value] if isinstance(value, (list, tuple)) else [(False, value)]
        return all(fits for fits, _ in items), [typed for _, typed in items]
    if origin is dict:
        return isinstance(value, dict), value
    return True, value


def checked_types(cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every value checked against its field's declared type (ConfigError naming the field, the value
    and the kind it must be) and made that plain type: a wrong kind is refused here, not met as a TypeError later."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in data.items():
        hint = hints[name]
        fits, out[name] = _typed(value, hint)
        if not fits:
            kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise ConfigError(f"{name} must be of type {kind}, got {value!r} ({type(value).__name__})")
    return out


def field_kind(hint: Any) -> type:
    """The plain kind of a field's declared type (bool, list, dict, int, float or str; an optional type's own kind):
    what a command-line flag of the field parses, read from the same hints that checked_types checks."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        return field_kind(args[0])
    origin = typing.get_origin(hint) or hint
    kinds = {bool: bool, list: list, tuple: list, dict: dict, int: int, float: float}
    return kinds.get(origin, str)


class Settings:
    """What every settings dataclass shares: plain dict and YAML in and out, unknown fields and bad YAML refused
    with one clear message. `retired`: fields that older versions wrote, by name: (the value that means "off", why it
    went); a saved config holding one at that value still reads, any other value is refused by name."""

    retired: ClassVar[dict[str, tuple[Any, str]]] = {}
    renamed: ClassVar[dict[str, str]] = {}  # old name -> new name: a saved config's old name reads as the new one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data = {cls.renamed.get(k, k): v for k, v in data.items()}
        for name, (off, why) in cls.retired.items():
            if name in data and data.pop(name) != off:
                raise ConfigError(
                    f"config field {name} was removed ({why}); this version cannot repeat a run that "
                    f"set it: delete the field, or use the covidct release the run was made with"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**checked_types(cls, data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Any:
        path = Path(path)
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None

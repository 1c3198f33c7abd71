"""What every settings class shares: a field declared once with its default, help and choices (`setting`), read
from and written to YAML and dicts (`Settings`), and the names of the choices settings may take."""

from __future__ import annotations

import dataclasses
import os
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
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Any:
        path = Path(path)
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
        return cls.from_dict(data)

"""Typed cards: the JSON records stored beside a model (the detector's ood.json, the ImageNet probe's card) declared
as Pydantic models, validated on read and on write. A missing field, a field of the wrong type or a field the card
does not know is refused by name, with the file and what to do, as `ModelCard` refuses a bad model.json.

Pydantic rather than hand-written checks: it already reports every bad field with its path (`sources.0.threshold`)
and its reason, and `extra="forbid"` is the "unknown fields refused" rule in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from covidct.errors import ModelError
from covidct.fileio import read_json

Card = TypeVar("Card", bound="StrictCard")


class StrictCard(BaseModel):
    """A card's fields, no others: unknown fields are refused; values are checked against each field's type."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def read(cls: type[Card], data: Any, where: str, fix: str) -> Card:
        """The card in `data` (parsed JSON), or a ModelError naming `where`, each bad field, and `fix`."""
        if not isinstance(data, dict):
            raise ModelError(f"{where}: must hold a JSON object, got {type(data).__name__}; {fix}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ModelError(f"{where}: {field_errors(e)}; {fix}") from None

    def record(self) -> dict[str, Any]:
        """The card as JSON values, absent fields left out (what is written)."""
        return self.model_dump(mode="json", exclude_none=True)


class OpenCard(StrictCard):
    """A record whose named fields are checked and whose other fields are kept as they are: for the files covidct
    writes with many optional parts (an evaluation's metrics.json, a run's summary.json), where what every reader
    relies on is declared and refused by name when missing or mistyped."""

    model_config = ConfigDict(extra="allow")


def read_json_card(cls: type[Card], path: Path, fix: str) -> Card:
    """The card in the JSON file at `path`, checked: a ModelError naming the file and what is wrong (not JSON, not
    an object, a bad field) and `fix` otherwise."""
    data = read_json(path, fix)
    return cls.read(data, str(path), fix)


def field_errors(error: ValidationError, most: int = 4) -> str:
    """Pydantic's errors as one line: 'field a.b: reason' for each, unknown fields named as such."""
    parts = []
    for e in error.errors()[:most]:
        name = ".".join(str(p) for p in e["loc"]) or "(the card)"
        reason = "is not a field of this card" if e["type"] == "extra_forbidden" else e["msg"].lower()
        parts.append(f"field {name!r} {reason}")
    more = error.error_count() - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")

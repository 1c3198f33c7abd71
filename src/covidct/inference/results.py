"""What scoring gives back, typed: `Predictions` (predict's rows and report, as `covidct predict` writes them) and
a `Result` per row. covidct.api returns them from `Model.predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.inference.predict import write_rows


@dataclass(frozen=True)
class Result:
    """One scored input, typed: an image or slice (`slice` its index, "" for an image file), or the summary of a
    volume or study (`slice` "volume" or "study"). in_distribution and ood_reason are None without a detector;
    score is None for a slice of a series that could not be read."""

    path: str
    series: str
    slice: str
    score: float | None  # None: a slice that could not be read (its label says why)
    label: str
    threshold: float
    in_distribution: bool | None
    ood_reason: str | None

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Result:
        flag = row.get("in_distribution")
        return cls(
            str(row["path"]),
            str(row.get("series", "")),
            str(row.get("slice", "")),
            None if row["score"] == "" else float(row["score"]),
            str(row["label"]),
            float(row["threshold"]),
            None if flag is None else bool(flag),
            row.get("ood_reason") or None,
        )


@dataclass
class Predictions:
    """What `Model.predict` gives: `rows` (a dict per image or slice, and a summary row per volume, series and study:
    the CSV `covidct predict` writes) and `report` (the patient-level results: the JSON it writes)."""

    rows: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def results(self) -> list[Result]:
        """Every row as a typed `Result` (score, label, operating point, out of distribution and why)."""
        return [Result.of_row(r) for r in self.rows]

    @property
    def shift(self) -> dict[str, Any]:
        """The batch shift test of everything scored ("tested": False and why when it could not run)."""
        return self.report["shift"]

    @property
    def skipped(self) -> list[str]:
        """The inputs that could not be read, each with why."""
        return list(self.report.get("skipped", []))

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows as `covidct predict` writes its CSV (in_distribution 1, 0, or empty without a detector).

        >>> predictions.to_csv("predictions.csv")  # doctest: +SKIP
        """
        return write_rows(Path(path), self.rows)

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame (pandas is needed for this one call only)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Predictions.to_frame needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows)

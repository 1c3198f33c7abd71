"""The acquisition check: where an input carries a record of how it was acquired (a DICOM header: manufacturer,
reconstruction kernel, pixel spacing, slice thickness; a NIfTI header: voxel spacing), is that acquisition among
those the training images held? A model trained on image files (PNG/JPEG figures, as COVID-CT's and SARS-CoV-2 CT's
are) has seen no scanner's acquisition at all, so every DICOM or NIfTI input is outside what it learned: measured
outside this project, such models score real scanners' CT near chance while their image detector (detector.py) finds
those slices ordinary (benchmarks/OOD.md). A model adapted on a site's own DICOM slices records the site's scanners
and kernels, and the site's next studies pass.

The record is a few strings and numbers, kept in ood.json beside the detector (no pickle). Image files carry no
acquisition record; what their header does say is their shape: an image whose aspect (width / height) lies outside
the central 98% of the training images' is flagged. Why: a scanner's slice is square (512 x 512), while COVID-CT's
figures are cut wider than tall (1 square image in 425). The detector's framing half sees that too, but its score
for a square image sits near its threshold (1.06-1.4 times it, by the margin rows: benchmarks/OOD.md), which moves
with every retraining; the shape as stored, read from the header, does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.data import inputs
from covidct.errors import ModelError

IMAGE_FILE, DICOM, NIFTI = "image file", "DICOM", "NIfTI"
KINDS = (IMAGE_FILE, DICOM, NIFTI)
# the kind of each reader (covidct.data.inputs) whose files carry an acquisition record
READER_KINDS = {inputs.IMAGE: IMAGE_FILE, inputs.DICOM: DICOM, inputs.NIFTI: NIFTI}
# How far outside the training range a spacing may lie and still count as seen: pixel spacing follows the field of
# view (a larger patient, a few % more), slice thickness comes in steps (0.625, 1, 1.25, 2.5, 5 mm) where one step
# changes the image's noise and sharpness.
SPACING_TOLERANCE = 1.15
THICKNESS_TOLERANCE = 1.25
# The aspects seen: the training images' 1st to 99th percentile (a few odd figures do not widen it), then 5% either
# side (resizing rounds the aspect by under 1%; on the default model's validation split, 5% flags no image that the
# detector does not flag already: benchmarks/OOD.md).
ASPECT_PERCENTILES = (1.0, 99.0)
ASPECT_TOLERANCE = 1.05


@dataclass(frozen=True)
class Acquisition:
    """How one input was acquired, as far as its file says."""

    kind: str  # IMAGE_FILE, DICOM or NIFTI
    manufacturer: str = ""
    kernel: str = ""
    pixel_spacing: float | None = None  # mm, in-plane
    slice_thickness: float | None = None  # mm
    aspect: float | None = None  # an image file's width / height as stored (None: not read, or a scanner slice)

    @property
    def scanner(self) -> tuple[str, str]:
        return (self.manufacturer, self.kernel)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = " ".join(str(v) for v in value)
    return " ".join(str(value or "").split()).upper()


def _number(value: Any) -> float | None:
    try:
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if number > 0 else None


def from_header(reader: Any, source: Path | bytes) -> Acquisition:
    """The acquisition of one input (a path, or an upload's bytes) from its reader's header (covidct.data.inputs:
    Reader.header; headers only, no pixels). No reader, or a header that cannot be read, gives the kind alone (what
    is wrong with the file is for the reader of its pixels to say)."""
    kind = READER_KINDS.get(reader.kind, IMAGE_FILE) if reader is not None else IMAGE_FILE
    if reader is None or reader.header is None:
        return Acquisition(kind)
    try:
        h = reader.header(source)
    except Exception:  # PIL, pydicom and nibabel raise many kinds; the reader of the pixels names the problem
        return Acquisition(kind)
    spacing, thickness = _number(h.get("pixel_spacing")), _number(h.get("slice_thickness"))
    return Acquisition(kind, _text(h.get("manufacturer")), _text(h.get("kernel")), spacing, thickness, h.get("aspect"))


def of_file(path: str | Path) -> Acquisition:
    """The acquisition of an input file, from its reader's header."""
    return from_header(inputs.reader_for(Path(path)), Path(path))


def of_upload(data: bytes) -> Acquisition:
    """The acquisition of an upload, from the header of the reader that takes its bytes."""
    return from_header(inputs.reader_for_bytes(data), data)


def _range(values: list[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def _within(value: float | None, seen: tuple[float, float] | None, tolerance: float) -> bool:
    return value is None or seen is None or seen[0] / tolerance <= value <= seen[1] * tolerance


def _central(values: list[float]) -> tuple[float, float] | None:
    import numpy as np

    return tuple(float(v) for v in np.percentile(values, ASPECT_PERCENTILES)) if values else None  # type: ignore


@dataclass
class AcquisitionRecord:
    """What the training images held: how many of each kind, for DICOM and NIfTI the scanners (manufacturer,
    kernel) and the range of pixel spacing and slice thickness, and the central range of the image files' aspects
    (scanner slices are judged by their headers: a site's few DICOM slices must not be trimmed as outliers)."""

    kinds: dict[str, int]
    scanners: list[tuple[str, str]]
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: tuple[float, float] | None = None
    aspect: tuple[float, float] | None = None  # None: no image files among the training images (no aspect check)

    @classmethod
    def of(cls, acquisitions: Iterable[Acquisition], sources: Iterable[str] | None = None) -> AcquisitionRecord:
        """`sources`: a training source per acquisition; the aspect range is then the union of each source's central
        range, so that a site's few images are not trimmed as the larger source's outliers."""
        items = list(acquisitions)
        names = [""] * len(items) if sources is None else list(sources)
        scanned = [a for a in items if a.kind != IMAGE_FILE]
        aspects: dict[str, list[float]] = {}
        for a, name in zip(items, names):
            if a.kind == IMAGE_FILE and a.aspect is not None:
                aspects.setdefault(name, []).append(a.aspect)
        ranges = [_central(v) for v in aspects.values()]
        return cls(
            kinds={k: n for k in KINDS if (n := sum(a.kind == k for a in items))},
            scanners=sorted({a.scanner for a in scanned if a.kind == DICOM}),
            pixel_spacing=_range([a.pixel_spacing for a in scanned if a.pixel_spacing is not None]),
            slice_thickness=_range([a.slice_thickness for a in scanned if a.slice_thickness is not None]),
            aspect=(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,  # type: ignore[index]
        )

    @classmethod
    def of_paths(cls, paths: Iterable[str | Path], sources: Iterable[str] | None = None) -> AcquisitionRecord:
        return cls.of((of_file(p) for p in paths), sources)

    def unseen(self, acq: Acquisition) -> str | None:
        """Why `acq` is outside what the training images held, or None."""
        if acq.kind == IMAGE_FILE:
            return self._odd_aspect(acq)
        if not any(self.kinds.get(k) for k in (DICOM, NIFTI)):
            return (
                f"a scanner acquisition ({acq.kind}); this model was trained on image files only "
                f"({self.kinds.get(IMAGE_FILE, 0)}), with no scanner's CT among them"
            )
        if acq.kind == DICOM and self.scanners and acq.scanner not in self.scanners:
            seen = "; ".join(f"{m or '?'} / {k or '?'}" for m, k in self.scanners[:5])
            return f"scanner {acq.manufacturer or '?'} / kernel {acq.kernel or '?'} not seen in training (seen: {seen})"
        if not _within(acq.pixel_spacing, self.pixel_spacing, SPACING_TOLERANCE):
            lo, hi = self.pixel_spacing or (0, 0)
            return f"pixel spacing {acq.pixel_spacing:g} mm outside the {lo:g}-{hi:g} mm seen in training"
        if not _within(acq.slice_thickness, self.slice_thickness, THICKNESS_TOLERANCE):
            lo, hi = self.slice_thickness or (0, 0)
            return f"slice thickness {acq.slice_thickness:g} mm outside the {lo:g}-{hi:g} mm seen in training"
        return None

    def _odd_aspect(self, acq: Acquisition) -> str | None:
        if _within(acq.aspect, self.aspect, ASPECT_TOLERANCE):
            return None
        lo, hi = self.aspect or (0, 0)
        return (
            f"an image of aspect {acq.aspect:.2f} (width / height), outside the {lo:.2f}-{hi:.2f} of 98% of the "
            "training images"
        )

    def summary(self) -> str:
        """One line for a model card: what was seen."""
        kinds = ", ".join(f"{n} {k}{'s' if k == IMAGE_FILE else ' slices'}" for k, n in self.kinds.items())
        if not self.scanners and self.pixel_spacing is None:
            flagged = "no scanner acquisition seen; every DICOM or NIfTI input is flagged"
            return f"trained on {kinds}: {flagged}" + self._aspects()
        scanners = "; ".join(f"{m or '?'} / {k or '?'}" for m, k in self.scanners)
        return f"trained on {kinds}; scanners / kernels seen: {scanners or 'none recorded'}" + self._aspects()

    def _aspects(self) -> str:
        return "" if self.aspect is None else f"; image aspects {self.aspect[0]:.2f}-{self.aspect[1]:.2f} (98%)"

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": dict(self.kinds),
            "scanners": [list(s) for s in self.scanners],
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "slice_thickness": list(self.slice_thickness) if self.slice_thickness else None,
            "aspect": list(self.aspect) if self.aspect else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> AcquisitionRecord:
        """The record saved in `where` (ood.json); a malformed one is refused naming the field."""
        if not isinstance(data, dict):
            raise _malformed(where, "(the whole record)")
        kinds, scanners = data.get("kinds"), data.get("scanners")
        if not isinstance(kinds, dict) or any(k not in KINDS or not isinstance(n, int) for k, n in kinds.items()):
            raise _malformed(where, "kinds")
        if not isinstance(scanners, list) or not all(_is_pair(s, str) for s in scanners):
            raise _malformed(where, "scanners")
        ranges = {}
        for name in ("pixel_spacing", "slice_thickness", "aspect"):
            value = data.get(name)
            if value is not None and not _is_pair(value, int | float, positive=True):
                raise _malformed(where, name)
            ranges[name] = (float(value[0]), float(value[1])) if value else None
        return cls(dict(kinds), [(s[0], s[1]) for s in scanners], **ranges)


def _is_pair(value: Any, kind: Any, positive: bool = False) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, kind) for v in value)
        and (not positive or all(v > 0 for v in value))
    )


def _malformed(where: str, field: str) -> ModelError:
    return ModelError(f"{where}: acquisitions.{field} is malformed; refit the detector: covidct ood fit RUN")

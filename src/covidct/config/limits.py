"""The input limits: what one input may cost (InputLimits, declared once), and the limits in force where a reader
runs (`active_limits`, set by `with limits.applied()`)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from covidct.config.base import Settings, setting
from covidct.errors import ConfigError


@dataclass(frozen=True)
class InputLimits(Settings):
    """What one input may cost, declared once: `covidct serve` (per request) and `covidct predict` (per file) refuse
    anything over a limit with a message naming the limit and the value, before the bytes are decoded or written.
    The defaults hold with room to spare what a CT slice or series is, and bound what a hostile input can cost (the
    abuse suite, tests/inference/test_abuse.py, checks the memory and disk bounds this gives)."""

    upload_mb: float = setting(20.0, "largest upload of one image file (PNG, JPEG, DICOM), in MB")
    archive_mb: float = setting(100.0, "largest upload of a ZIP of a DICOM series or study, in MB")
    archive_members: int = setting(2000, "most files in a ZIP upload")
    member_mb: float = setting(64.0, "largest file in a ZIP once expanded, in MB")
    expanded_mb: float = setting(200.0, "most bytes a ZIP may expand to, all files together, in MB")
    inflight_mb: float = setting(
        400.0,
        "serve: most memory that uploads in flight hold, all requests together (each counted twice: its body and "
        "the form's copy), in MB; past it: 503 with Retry-After; at least twice archive_mb",
    )
    member_ratio: float = setting(200.0, "largest expansion of a ZIP member over its compressed size (CT: 2-4x)")
    pixels: int = setting(50_000_000, "most pixels in one image or slice (width x height)")
    min_side: int = setting(32, "fewest pixels on an image's shorter side (COVID-CT's smallest training image: 61)")
    dicom_mb: float = setting(
        128.0,
        "largest DICOM data set once decoded (rows x columns x frames x bytes per "
        "sample, and a deflated data set inflated), in MB",
    )
    series_slices: int = setting(2000, "most slices in one DICOM series or NIfTI volume")
    volume_mb: float = setting(
        1024.0, "largest NIfTI volume once decompressed (columns x rows x slices x bytes per voxel), in MB"
    )
    folder_entries: int = setting(
        200_000,
        "most files and folders listed under one input folder, links followed (a folder reached through two links "
        "counts twice)",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"limit {f.name} must be a number > 0, got {value!r}")
        if self.inflight_mb < 2 * max(self.archive_mb, self.upload_mb):
            raise ConfigError(
                f"limit inflight_mb ({self.inflight_mb:g}) must be at least twice archive_mb and upload_mb "
                f"({2 * max(self.archive_mb, self.upload_mb):g}): no upload at the limit could be served"
            )

    def megabytes(self, name: str) -> int:
        """A limit given in MB, in bytes."""
        return int(float(getattr(self, name)) * 1024 * 1024)

    def applied(self) -> contextlib.AbstractContextManager[InputLimits]:
        """These limits for the readers called inside the `with` block (this thread or task only)."""
        return _applied(self)


INPUT_LIMITS = InputLimits()  # the defaults, read by the readers outside any `with limits.applied()`
_ACTIVE_LIMITS: contextvars.ContextVar[InputLimits] = contextvars.ContextVar("covidct_limits", default=INPUT_LIMITS)


def active_limits() -> InputLimits:
    """The limits in force here: those of the innermost `with limits.applied()`, else the defaults."""
    return _ACTIVE_LIMITS.get()


@contextlib.contextmanager
def _applied(limits: InputLimits) -> Iterator[InputLimits]:
    token = _ACTIVE_LIMITS.set(limits)
    try:
        yield limits
    finally:
        _ACTIVE_LIMITS.reset(token)

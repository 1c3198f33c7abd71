"""DICOM as it comes from a PACS or a CD: files grouped by StudyInstanceUID and SeriesInstanceUID (not by folder),
DICOMDIR read when present, the axial CT image series kept and everything else skipped with a note saying why
(non-image objects such as SR, RT or presentation states; localizer/scout images; other modalities; multi-frame
objects), slices ordered by ImagePositionPatient along the slice normal, gaps and mixed orientations noted.

Headers are read first (no pixels); pixels are decoded one slice at a time when a series is scored, so memory
stays flat whatever the series' length. Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg,
pylibjpeg-libjpeg/-openjpeg/-rle, python-gdcm), installed with covidct.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidct.config import active_limits
from covidct.data.images import listed_files
from covidct.data.medical import LUNG_WINDOW, apply_window, dicom_hu, is_dicom, open_dicom
from covidct.errors import DataError

MAX_SLICE_PIXELS = 50_000_000  # Rows x Columns x NumberOfFrames above this is refused before decoding
NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "SEG", "REG", "DOC", "AU"}
DECODERS = "pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle and python-gdcm"


@dataclass
class Slice:
    path: Path
    position: float  # along the slice normal, mm (else the instance number)
    instance: int


@dataclass
class Series:
    study_uid: str
    series_uid: str
    description: str = ""
    kernel: str = ""
    patient: str = ""
    slices: list[Slice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    orientation: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        return self.description or self.series_uid[-12:]

    def looks_like_lung_reconstruction(self) -> bool:
        text = f"{self.description} {self.kernel}".lower()
        return any(w in text for w in ("lung", "pulmo", "chest hr", "b70", "b60", "bone", "sharp"))


@dataclass
class StudyScan:
    """What a folder holds: the CT series to score and a note for each file or series skipped."""

    series: list[Series]
    skipped: list[str]

    def studies(self) -> dict[str, list[Series]]:
        out: dict[str, list[Series]] = {}
        for s in self.series:
            out.setdefault(s.study_uid, []).append(s)
        return out


def _files(folder: Path) -> tuple[list[Path], list[str]]:
    """The DICOM files of a folder: those DICOMDIR names when it has one, else every DICOM file under it."""
    dicomdir = next((p for p in (folder / "DICOMDIR", folder / "dicomdir") if p.is_file()), None)
    if dicomdir is not None:
        try:
            from pydicom.fileset import FileSet

            fs = FileSet(dicomdir)
            return [Path(inst.path) for inst in fs if inst.path], [f"read {dicomdir} ({len(fs)} instances)"]
        except Exception as e:  # a damaged DICOMDIR: fall back to the files themselves
            note = f"{dicomdir}: unreadable DICOMDIR ({type(e).__name__}: {e}); scanned the folder instead"
            return [p for p in listed_files(folder) if p.name.upper() != "DICOMDIR" and is_dicom(p)], [note]
    return [p for p in listed_files(folder) if is_dicom(p)], []


def scan_folder(folder: str | Path) -> StudyScan:
    """Group a folder's DICOM files into studies and series; see the module's docstring for what is skipped."""
    folder = Path(folder)
    files, skipped = _files(folder)
    if not files:
        raise DataError(f"folder {folder} holds no DICOM files")
    series: dict[tuple[str, str], Series] = {}
    for path in files:
        try:
            ds = open_dicom(path, header_only=True)
        except DataError as e:
            skipped.append(str(e))  # it names the file
            continue
        why = not_a_ct_slice(ds)
        if why:
            skipped.append(f"{path}: {why}")
            continue
        add_slice(series_of(series, ds, path), ds, path)
    out = [s for s in series.values() if keep_series(s, skipped)]
    if not out:
        raise DataError(
            f"folder {folder}: no axial CT image series found ({len(skipped)} file(s) skipped: "
            f"{'; '.join(skipped[:3])})"
        )
    return StudyScan(out, skipped)


def not_a_ct_slice(ds: Any) -> str | None:
    """Why a DICOM header is not a single CT image slice covidct scores, or None when it is one."""
    modality = str(getattr(ds, "Modality", "") or "")
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if modality in NON_IMAGE_MODALITIES or not rows or not cols:
        return f"not an image ({modality or 'no modality'}, no pixel rows/columns)"
    if modality != "CT":
        return f"modality {modality or 'missing'}, not CT"
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer/scout image"
    if rows * cols * frames > MAX_SLICE_PIXELS:
        return f"{cols}x{rows}x{frames} pixels is over the limit of {MAX_SLICE_PIXELS:,}"
    if frames > 1:
        return f"multi-frame object ({frames} frames); covidct scores single-slice series"
    return None


def series_of(series: dict[tuple[str, str], Series], ds: Any, path: Path) -> Series:
    """The series a slice belongs to (by study and series UID), created on its first slice."""
    import pydicom

    key = (
        str(getattr(ds, "StudyInstanceUID", "") or "unknown-study"),
        str(getattr(ds, "SeriesInstanceUID", "") or f"folder:{path.parent}"),
    )
    if key not in series:
        kernel = getattr(ds, "ConvolutionKernel", "") or ""
        if isinstance(kernel, list | tuple | pydicom.multival.MultiValue):
            kernel = " ".join(kernel)
        series[key] = Series(
            key[0],
            key[1],
            str(getattr(ds, "SeriesDescription", "") or ""),
            str(kernel),
            str(getattr(ds, "PatientID", "") or ""),
        )
    return series[key]


def add_slice(s: Series, ds: Any, path: Path) -> None:
    """Add a slice at its position along the series' normal (its instance number where the geometry is missing);
    a slice whose orientation differs from the series' is left out with a note."""
    orientation = getattr(ds, "ImageOrientationPatient", None)
    position = getattr(ds, "ImagePositionPatient", None)
    instance = int(getattr(ds, "InstanceNumber", 0) or 0)
    if orientation is not None and len(orientation) == 6 and position is not None and len(position) == 3:
        o = tuple(round(float(v), 3) for v in orientation)
        if s.orientation is None:
            s.orientation = o
        elif not np.allclose(o, s.orientation, atol=1e-2):
            s.notes.append(f"{path}: orientation {o} differs from the series' {s.orientation}; slice left out")
            return
        normal = np.cross(np.array(o[:3]), np.array(o[3:]))
        pos = float(np.dot(normal, np.array([float(v) for v in position])))
    else:
        pos = float(instance)
    s.slices.append(Slice(path, pos, instance))


def keep_series(s: Series, skipped: list[str]) -> bool:
    """Sort a series' slices; an axial one is kept (gaps noted), another is skipped with a note."""
    s.slices.sort(key=lambda x: (x.position, x.instance, x.path.name))
    if s.orientation is not None and abs(float(np.cross(s.orientation[:3], s.orientation[3:])[2])) < 0.8:
        skipped.append(f"series {s.label}: not axial (orientation {s.orientation})")
        return False
    most = active_limits().series_slices
    if len(s.slices) > most:
        skipped.append(f"series {s.label}: {len(s.slices)} slices is over the limit of {most} (series_slices)")
        return False
    _note_gaps(s)
    return True


def _note_gaps(s: Series) -> None:
    """Missing slices: a step between neighbours over 1.5 x the median step."""
    if len(s.slices) < 3:
        return
    steps = np.diff([x.position for x in s.slices])
    median = float(np.median(steps))
    gaps = int((steps > 1.5 * median).sum()) if median > 0 else 0
    if gaps:
        s.notes.append(f"{gaps} gap(s) in slice positions (median step {median:.2f} mm): slices may be missing")
    if median == 0:
        s.notes.append("several slices share one position")


def slice_hu(path: Path) -> tuple[np.ndarray, Any]:
    """One slice's HU and its dataset; a transfer syntax no installed plugin decodes names the syntax."""
    ds = open_dicom(path)
    try:
        return dicom_hu(ds, str(path)), ds
    except DataError as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        if "cannot be decoded" in str(e) and syntax is not None and syntax.is_compressed:
            raise DataError(f"{e}; transfer syntax {name}: install covidct's decoders ({DECODERS})") from None
        raise


def iter_series(
    s: Series, window: tuple[float, float] = LUNG_WINDOW
) -> Iterator[tuple[Slice, np.ndarray | None, np.ndarray | None, str]]:
    """(slice, HU, grey, problem) one slice at a time; a slice that cannot be read gives (slice, None, None, why)."""
    for sl in s.slices:
        try:
            hu, ds = slice_hu(sl.path)
        except DataError as e:
            yield sl, None, None, str(e)
            continue
        grey = apply_window(hu, *window)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            grey = 255 - grey
        yield sl, hu, grey, ""

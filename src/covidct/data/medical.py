"""DICOM and NIfTI input: CT values to Hounsfield units, a lung window, and 8-bit grey slices the models read.

DICOM (pydicom): stored values x RescaleSlope + RescaleIntercept = HU; MONOCHROME1 (low values shown white) is
inverted after windowing; compressed transfer syntaxes decode where pydicom has a handler. NIfTI (nibabel): a 3-D
volume in HU, cut into axial slices along its last axis. The window (centre, width) maps HU to grey: the default
lung window -600 / 1500 shows -1350 HU (air, black) to +150 HU (soft tissue, white).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.config import active_limits
from covidct.errors import DataError

LUNG_WINDOW = (-600.0, 1500.0)  # (centre, width) in HU
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: pydicom inflates it whole, unbounded
INFLATE_CHUNK = 1024 * 1024
DICOM_SUFFIXES = {".dcm", ".dicom"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """By suffix, or by the 'DICM' marker at byte 128 of files without one."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def apply_window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """HU -> uint8 grey: centre - width/2 and below black, centre + width/2 and above white, linear between."""
    if not width > 0:
        raise DataError(f"window width must be > 0, got {width!r}")
    lo = centre - width / 2
    grey = (np.asarray(hu, dtype=np.float32) - lo) / width * 255.0
    return np.clip(grey, 0, 255).round().astype(np.uint8)


def grey_image(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey, mode="L").convert("RGB")


def open_dicom(source: str | Path | bytes, name: str | None = None, header_only: bool = False) -> Any:
    """The one way covidct opens a DICOM file (a path, or an upload's bytes), within the active input limits
    (covidct.config.InputLimits): a file larger than a decoded data set may be, or a deflated data set that inflates
    past it, is refused before pydicom reads it (pydicom inflates a deflated data set whole, in memory: 0.5 MB became
    512 MB). Anything unreadable is a DataError naming the file."""
    import pydicom

    name = name or str(source)
    limit = active_limits().megabytes("dicom_mb")
    try:
        data = source if isinstance(source, bytes) else _bounded_read(Path(source), limit, name)
        fp = io.BytesIO(data)
        pydicom.filereader.read_preamble(fp, False)
        meta = pydicom.filereader.read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED and not _inflates_within(data[fp.tell() :], limit):
            raise DataError(
                f"DICOM file {name}: its deflated data set inflates past the limit of {limit:,} bytes "
                "(dicom_mb); refused before decoding"
            )
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"DICOM file {name} does not exist") from None
    except Exception as e:  # pydicom raises many kinds; all mean "not a DICOM file we can read"
        raise DataError(f"file {name} is not a readable DICOM file ({type(e).__name__}: {e})") from None


def _bounded_read(path: Path, limit: int, name: str) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise DataError(f"DICOM file {name}: {size:,} bytes is over the limit of {limit:,} (dicom_mb)")
    return path.read_bytes()


def _inflates_within(stream: bytes, limit: int) -> bool:
    """Whether a raw deflate stream inflates to at most `limit` bytes, found by inflating it a chunk at a time and
    keeping nothing (zlib's max_length: never more than one chunk in memory)."""
    inflater, total, pending = zlib.decompressobj(-zlib.MAX_WBITS), 0, stream
    while True:
        try:
            out = inflater.decompress(pending, INFLATE_CHUNK)
        except zlib.error:
            return True  # not a valid stream: pydicom's own error names it, at no cost
        total += len(out)
        if total > limit:
            return False
        pending = inflater.unconsumed_tail
        if not pending and len(out) < INFLATE_CHUNK:
            return True


def check_pixel_budget(ds: Any, source: str) -> None:
    """Refuse, from the header and before any pixel is decoded, a data set that is not one 2-D slice or whose
    decoded pixels would pass the active input limits (covidct.config.InputLimits: pixels, dicom_mb)."""
    limits = active_limits()
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"DICOM file {source}: expected one 2-D slice, got {frames} frames (a multi-frame file)")
    if rows * cols > limits.pixels:
        raise DataError(f"DICOM file {source}: {cols}x{rows} pixels is over the limit of {limits.pixels:,} (pixels)")
    decoded = rows * cols * int(ds.get("SamplesPerPixel", 1) or 1) * max(8, int(ds.get("BitsAllocated", 16) or 16)) // 8
    if decoded > limits.megabytes("dicom_mb"):
        raise DataError(
            f"DICOM file {source}: {decoded:,} bytes of pixels is over the limit of "
            f"{limits.megabytes('dicom_mb'):,} (dicom_mb)"
        )


def dicom_hu(ds: Any, source: str) -> np.ndarray:
    """Hounsfield units of one DICOM dataset's pixels (2-D): stored value x slope + intercept."""
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {source} has no pixel data (PixelData element missing)")
    check_pixel_budget(ds, source)
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as e:
        raise DataError(f"DICOM file {source}: pixel data cannot be decoded ({type(e).__name__}: {e})") from None
    if pixels.ndim != 2:
        raise DataError(f"DICOM file {source}: expected one 2-D slice, got pixel array of shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels * slope + intercept


def dicom_grey(ds: object, source: str, window: tuple[float, float]) -> Image.Image:
    """One DICOM slice windowed to grey; MONOCHROME1 (low values shown white) inverted after windowing, so the
    picture looks as the file means it to be seen."""
    grey = apply_window(dicom_hu(ds, source), *window)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return grey_image(grey)


def read_dicom(path: str | Path, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """One DICOM slice, windowed to an RGB image."""
    path = Path(path)
    return dicom_grey(open_dicom(path), str(path), window)


def read_dicom_hu(path: str | Path) -> np.ndarray:
    """One DICOM slice in Hounsfield units."""
    path = Path(path)
    return dicom_hu(open_dicom(path), str(path))

"""Reading any image file into 3-channel 8-bit RGB, whatever its mode (L, RGB, RGBA, P, 16-bit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct.config import active_limits
from covidct.errors import DataError
from covidct.fileio import files_under

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def is_dicom_slice(path: Path) -> bool:
    """A DICOM file (by suffix, or the 'DICM' marker of files without a known image suffix): one CT slice."""
    from covidct.data.medical import is_dicom

    return path.suffix.lower() not in IMAGE_SUFFIXES and is_dicom(path)


def is_slice_file(path: Path) -> bool:
    """What a labelled folder may hold, one slice per file: an image, or a DICOM slice as hospitals export them."""
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.is_file() and is_dicom_slice(path))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit and float images are rescaled min-max to 0-255 (PIL's own convert would clip them);
    transparent images are laid over black, the background of a CT slice.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


@contextmanager
def _readable(what: str) -> Iterator[None]:
    """Pillow's errors on opening or decoding an image as one DataError naming it (`what`: "image file PATH", or an
    upload's name)."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{what} does not exist") from None
    except Image.DecompressionBombError as e:  # Pillow's own bound, far above covidct's: say which limit it is
        raise DataError(
            f"{what}: {pixel_text(e)} is over the limit of {active_limits().pixels:,} pixels (pixels); refused "
            "before decoding"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what} cannot be read: it cannot be decoded as an image ({type(e).__name__}: {e})") from None


def image_header(path: str | Path) -> tuple[str, str, tuple[int, int]]:
    """(mode, format, (width, height)) of an image file without decoding its pixels; a DICOM slice is
    ("HU", "DICOM", its size). A missing or unreadable file raises DataError."""
    path = Path(path)
    if is_dicom_slice(path):  # no I/O for an image suffix
        from covidct.data.medical import open_dicom

        ds = open_dicom(path, header_only=True)
        try:
            return "HU", "DICOM", (int(ds.Columns), int(ds.Rows))
        except Exception as e:  # a header without rows or columns: no DICOM slice we can use
            raise DataError(f"file {path} is not a readable DICOM slice ({type(e).__name__}: {e})") from None
    with _readable(f"image file {path}"), Image.open(path) as img:
        return img.mode, img.format or "?", img.size


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB; a missing, unreadable or truncated file raises DataError. A DICOM slice
    is read in Hounsfield units and shown in the lung window (medical.read_dicom), as prediction reads it."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a named pipe would be waited on for ever (a data CSV can name one)
        raise DataError(f"image file {path} is not a file (a named pipe, socket, device or folder)")
    if is_dicom_slice(path):  # no I/O for an image suffix: this is every training decode
        from covidct.data.medical import read_dicom

        return read_dicom(path)  # RGB already
    return decode_rgb(path, f"image file {path}")


def decode_rgb(source: str | Path | BinaryIO, what: str) -> Image.Image:
    """An image file or an upload's bytes decoded fully into RGB, within the active pixel limit (checked from the
    header first); anything wrong with it raises DataError naming `what`."""
    with _readable(what), Image.open(source) as img:
        check_pixels(img.size, what)
        frames = getattr(img, "n_frames", 1)
        if frames > 1:  # scoring its first picture alone would be a silent answer for a whole stack
            raise DataError(
                f"{what} holds {frames} pictures (a multi-page TIFF or an animated image); covidct reads one picture "
                "per image file: save each slice as its own file, or the series as DICOM or NIfTI"
            )
        img.load()  # decode now, so a truncated file fails here and not in a worker later
        return to_rgb(img)


def pixel_text(error: Exception) -> str:
    """The size Pillow's DecompressionBombError names ("Image size (400000000 pixels) exceeds ..."), or a phrase."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,} pixels" if found else "the image"


def check_pixels(size: tuple[int, int], what: str) -> None:
    """Refuse, from the header and before decoding, an image over the active pixel limit (InputLimits.pixels)."""
    limit = active_limits().pixels
    if size[0] * size[1] > limit:
        raise DataError(f"{what}: {size[0]}x{size[1]} pixels is over the limit of {limit:,} (pixels)")


def check_scoring_size(size: tuple[int, int], what: str) -> None:
    """Refuse an image to be scored whose shorter side is under InputLimits.min_side: upsampled to the network's
    input, a few pixels hold nothing a score could mean (a 1 x 1 black PNG scored COVID at 0.98)."""
    limit = active_limits().min_side
    if min(size) < limit:
        raise DataError(
            f"{what}: {size[0]}x{size[1]} pixels is under the minimum of {limit} pixels a side "
            "(min_side); send the whole slice"
        )


def listed_files(folder: str | Path) -> list[Path]:
    """Every file under an input folder (fileio.files_under: links followed, loops not), within the active limit
    folder_entries: a DataError naming the folder past it."""
    return files_under(folder, active_limits().folder_entries)

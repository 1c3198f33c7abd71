"""The one reader of what a user gives covidct to score (MONAI's ImageReader is the model: first what a file is, then
its read). predict reads its files, folders and globs through it, serve its uploads (a ZIP of a series is unpacked
to a folder and read as one), and the labelled sets of `evaluate --on` and `adapt` their 2-D files (ImageDataset
decodes them with images.load_rgb, which `read_slice` is built on).

Each kind of input is one `Reader` in a registry (MONAI's `verify_suffix` / `read`): an image file (PNG, JPEG, ...),
a DICOM file (one slice), a NIfTI volume, and a folder of DICOM files (its studies and series found by UID:
dicom_study.scan_folder). A reader says whether it takes a path (`takes`; an upload: `takes_bytes`, by its first
bytes), what one of its inputs is to a scorer (`unit`: a SLICE, a VOLUME of slices or a folder of STUDIES) and how
to read it. `reader_for(path)` asks them in order of registration; adding a format is one reader and one
`register_reader` call, and predict, serve and the API take it. A read that fails raises DataError naming the file
and what is wrong; the commands skip that input, list it with the reason, and fail only when nothing could be scored.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.data.images import IMAGE_SUFFIXES, check_scoring_size, decode_rgb, listed_files, load_rgb
from covidct.data.medical import (
    LUNG_WINDOW,
    NIFTI_SUFFIXES,
    apply_window,
    dicom_grey,
    is_dicom,
    is_nifti,
    open_dicom,
)
from covidct.errors import DataError

IMAGE, DICOM, NIFTI, DICOM_FOLDER, ZIP = "image", "dicom", "nifti", "dicom-folder", "zip"
SLICE, VOLUME, STUDIES = "slice", "volume", "studies"  # what one input is to a scorer


@dataclass(frozen=True)
class Reader:
    """One kind of input. `takes(path)`: is this path one of mine (by suffix, or a marker in the file); `unit`: a
    SLICE (`read(path, window)` gives an RGB picture), a VOLUME (`read(path, window)` gives its slices as (HU, grey)
    arrays) or a folder of STUDIES (`read(path)` gives its scan: dicom_study.FolderScan). Uploads: `takes_bytes`
    (from the first bytes; a name is not trusted) and `read_bytes(data, name, window)`, for SLICE readers.
    `header(path or bytes)`: what the file says of its acquisition, from its header alone (no pixels decoded):
    a dict of manufacturer, kernel, pixel_spacing, slice_thickness (mm) or aspect, as the header holds them; the
    out-of-distribution check reads it (covidct.ood.acquisition.of_file)."""

    kind: str
    unit: str
    takes: Callable[[Path], bool]
    read: Callable[..., Any]
    takes_bytes: Callable[[bytes], bool] | None = None
    read_bytes: Callable[[bytes, str, tuple[float, float]], Image.Image] | None = None
    header: Callable[[Path | bytes], dict[str, Any]] | None = None


_READERS: list[Reader] = []


def register_reader(reader: Reader) -> Reader:
    """Add a reader; it is asked after those registered before it (a folder, NIfTI, DICOM, then images)."""
    if any(r.kind == reader.kind for r in _READERS):
        raise ValueError(f"a reader of {reader.kind!r} is registered already")
    _READERS.append(reader)
    return reader


def readers() -> list[Reader]:
    """The registered readers, in the order they are asked."""
    return list(_READERS)


def reader_for(path: Path) -> Reader | None:
    """The reader that takes `path`, or None (not an input covidct reads)."""
    return next((r for r in _READERS if r.takes(path)), None)


def kind_of(path: Path) -> str:
    """What a file or folder is to covidct: IMAGE, DICOM, NIFTI, DICOM_FOLDER (a registered reader's kind), or ""
    (not an input). A DICOM file is known by its suffix or, without an image suffix, by the 'DICM' marker."""
    reader = reader_for(path)
    return reader.kind if reader else ""


def reader_for_bytes(data: bytes) -> Reader | None:
    """The reader that takes an upload's bytes (from its first bytes), or None."""
    return next((r for r in _READERS if r.takes_bytes is not None and r.takes_bytes(data)), None)


def kind_of_bytes(data: bytes) -> str:
    """What an upload is, from its first bytes (its name and declared type are not trusted): a reader's kind
    (IMAGE for PNG or JPEG, DICOM), ZIP (an archive of a series, unpacked to a folder) or ""."""
    if data.startswith(b"PK\x03\x04"):
        return ZIP
    reader = reader_for_bytes(data)
    return reader.kind if reader else ""


def _holds_dicom(folder: Path, files: list[Path]) -> bool:
    loose = (p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and not is_nifti(p))
    return (folder / "DICOMDIR").is_file() or any(is_dicom(p) for p in loose)


def list_inputs(items: list[str] | list[Path]) -> list[Path]:
    """Files, folders and globs, in a stable order, each once. A folder holding DICOM files is kept whole (its
    studies and series are found by UID); images and NIfTI files in other folders, or beside the DICOM files, one
    by one. A string may be a glob; a Path is taken as it is (a file named `scan[1].png` is that file), so listing
    what this listed gives the same list.

    >>> list_inputs([Path("/no/such/scan.png")])
    Traceback (most recent call last):
    ...
    covidct.errors.DataError: input /no/such/scan.png does not exist
    """
    found: list[Path] = []
    for item in items:
        literal = isinstance(item, Path)
        matches = [] if literal else [Path(p) for p in sorted(glob.glob(str(item), recursive=True))]
        for path in matches or [Path(item)]:
            if not path.exists():
                raise DataError(f"input {item} does not exist")
            if not (path.is_dir() or path.is_file()):  # opening a named pipe waits for a writer: for ever
                raise DataError(f"input {path} is not a file or a folder (a named pipe, socket or device); give files")
            found += _folder_inputs(path) if path.is_dir() else [path]
    if not found:
        raise DataError(f"no images, DICOM or NIfTI files found in {[str(i) for i in items]}")
    return list(dict.fromkeys(found))  # a file given twice (itself and its folder) is scored once


def _folder_inputs(folder: Path) -> list[Path]:
    """The folder (when it holds DICOM files: read as its studies) and its other files, each once. A file no reader
    takes stays in the list, to be skipped by name when read: a folder's .gif or .txt is reported, not passed over
    in silence. Hidden files (a name starting with '.': .DS_Store, editors' copies) are not inputs."""
    files = [p for p in listed_files(folder) if not p.name.startswith(".")]
    others = [p for p in files if kind_of(p) != DICOM]  # DICOM files: read as the folder's studies
    return [folder, *others] if _holds_dicom(folder, files) else others


def what_is_read() -> str:
    """The kinds of file the registered readers take, in words (for a message about a file none takes)."""
    names = {
        IMAGE: f"images ({', '.join(sorted(IMAGE_SUFFIXES))})",
        DICOM: "DICOM",
        NIFTI: f"NIfTI ({', '.join(NIFTI_SUFFIXES)})",
    }
    kinds = [names.get(r.kind, f"{r.kind} files") for r in _READERS if r.kind != DICOM_FOLDER]
    return "it reads " + ", ".join(kinds[:-1]) + " and " + kinds[-1]


def read_slice(path: Path, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """A 2-D input file (an image, or one DICOM slice shown in `window`) as an RGB image, within the sizes a model
    can score."""
    reader = reader_for(path)
    if reader is None:
        raise DataError(
            f"{path} is not a file covidct reads: {what_is_read()}; convert it to one of these, or leave it out"
        )
    if reader.unit != SLICE:
        raise DataError(
            f"{path} is not an image or a DICOM slice (a {reader.kind} covidct does not read as one picture)"
        )
    image = reader.read(path, window)
    check_scoring_size(image.size, f"{'image' if reader.kind == IMAGE else reader.kind.upper()} file {path}")
    return image


def read_bytes(data: bytes, name: str, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """An uploaded image or DICOM file (kind_of_bytes: IMAGE or DICOM) as an RGB image, within the active input
    limits; DataError names `name` and what is wrong."""
    kind = kind_of_bytes(data)
    reader = next((r for r in _READERS if r.kind == kind and r.read_bytes is not None), None)
    if reader is None:
        raise DataError(f"{name} is not a PNG, JPEG or DICOM file (judged by its bytes, not its name)")
    image = reader.read_bytes(data, name, window)
    check_scoring_size(image.size, name)
    return image


def volume_slices(path: Path, window: tuple[float, float] = LUNG_WINDOW) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HU, grey in `window`) of each axial slice of a NIfTI volume (values taken as HU). The volume is checked
    against the input limits from its header, then decompressed once (a .nii.gz read slice by slice inflates the
    file from its start for each one); any read that fails is a DataError naming the file, before the first slice."""
    voxels, slope, inter = read_volume(path)
    for k in range(voxels.shape[2]):  # NIfTI stores x first: transpose so each slice is rows x columns as displayed
        with np.errstate(invalid="ignore", over="ignore"):
            hu = np.asarray(voxels[:, :, k], dtype=np.float32).T * np.float32(slope) + np.float32(inter)
        if not np.isfinite(hu).all():  # NaN or infinite voxels: no HU a window can show; refused, not guessed
            raise DataError(f"NIfTI file {path}: slice {k} holds values that are not finite numbers (NaN or inf)")
        yield hu, apply_window(hu, *window)


def read_volume(path: Path) -> tuple[np.ndarray, float, float]:
    """(voxels as stored, x by y by slices; scale slope; intercept) of a NIfTI volume within the active input limits
    (pixels per slice, slices per volume, decoded bytes: covidct.config.InputLimits), each checked from the header
    before anything is decompressed."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, itemsize = img.shape, img.header.get_data_dtype().itemsize
    except FileNotFoundError:
        raise DataError(f"NIfTI file {path} does not exist") from None
    except Exception as e:
        raise DataError(f"file {path} is not a readable NIfTI volume ({type(e).__name__}: {e})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"NIfTI file {path}: expected a 3-D volume, got shape {img.shape}")
    check_volume_size(shape, itemsize, str(path))
    try:
        voxels = np.asarray(img.dataobj.get_unscaled()).reshape(shape)
        slope, inter = img.dataobj.slope, img.dataobj.inter
    except Exception as e:  # a file shorter than its header says, a cut .nii.gz: EOFError, ValueError, zlib.error
        raise DataError(
            f"NIfTI file {path} is truncated or damaged: its data cannot be read ({type(e).__name__}: {e})"
        ) from None
    slope = 1.0 if not np.isfinite(slope) or slope == 0 else float(slope)
    return voxels, slope, float(inter) if np.isfinite(inter) else 0.0


def check_volume_size(shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """Refuse a volume whose slices, slice count or decoded bytes pass the active input limits."""
    from covidct.config import active_limits

    limits = active_limits()
    columns, rows, slices = (int(n) for n in shape)
    if columns * rows > limits.pixels:
        raise DataError(
            f"NIfTI file {source}: slices of {columns} x {rows} pixels are over the limit of {limits.pixels:,} "
            "pixels (pixels)"
        )
    if slices > limits.series_slices:
        raise DataError(
            f"NIfTI file {source}: {slices:,} slices is over the limit of {limits.series_slices:,} (series_slices)"
        )
    decoded = columns * rows * slices * itemsize
    if decoded > limits.megabytes("volume_mb"):
        raise DataError(
            f"NIfTI file {source}: {decoded:,} bytes once decompressed is over the limit of "
            f"{limits.megabytes('volume_mb'):,} (volume_mb)"
        )


def _is_dicom_file(path: Path) -> bool:
    """A DICOM file: by its suffix or, without an image suffix, by the 'DICM' marker (an image file is not opened to
    look: listing a folder of PNG slices reads no file)."""
    return path.suffix.lower() not in IMAGE_SUFFIXES and not path.is_dir() and is_dicom(path)


def _dicom_slice(path: Path, window: tuple[float, float]) -> Image.Image:
    return dicom_grey(open_dicom(path), str(path), window)


def _dicom_upload(data: bytes, name: str, window: tuple[float, float]) -> Image.Image:
    return dicom_grey(open_dicom(data, name), name, window)


def _image_file(path: Path, window: tuple[float, float]) -> Image.Image:
    return load_rgb(path)  # an image file has no HU: the window does not apply


def _image_upload(data: bytes, name: str, window: tuple[float, float]) -> Image.Image:
    return decode_rgb(io.BytesIO(data), name)


def _dicom_folder(path: Path) -> Any:
    from covidct.data.dicom_study import scan_folder

    return scan_folder(path)


# The built-in readers, asked in this order: a folder of DICOM files, a NIfTI volume, a DICOM file, an image file.
def _image_header(source: Path | bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        width, height = img.size
    return {"aspect": width / height if width and height else None}


def _dicom_header(source: Path | bytes) -> dict[str, Any]:
    ds = open_dicom(source, "upload", header_only=True) if isinstance(source, bytes) else open_dicom(source, None, True)
    names = {"manufacturer": "Manufacturer", "kernel": "ConvolutionKernel", "pixel_spacing": "PixelSpacing"}
    return {key: getattr(ds, tag, None) for key, tag in {**names, "slice_thickness": "SliceThickness"}.items()}


def _nifti_header(source: Path | bytes) -> dict[str, Any]:
    import nibabel as nib

    zooms = nib.load(str(source)).header.get_zooms()
    return {"pixel_spacing": zooms[0], "slice_thickness": zooms[2] if len(zooms) > 2 else None}


register_reader(Reader(DICOM_FOLDER, STUDIES, lambda p: p.is_dir() and _holds_dicom(p, listed_files(p)), _dicom_folder))
register_reader(Reader(NIFTI, VOLUME, lambda p: not p.is_dir() and is_nifti(p), volume_slices, header=_nifti_header))
register_reader(
    Reader(
        DICOM,
        SLICE,
        _is_dicom_file,
        _dicom_slice,
        lambda data: len(data) >= 132 and data[128:132] == b"DICM",
        _dicom_upload,
        _dicom_header,
    )
)
register_reader(
    Reader(
        IMAGE,
        SLICE,
        lambda p: p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir(),
        _image_file,
        lambda data: data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")),
        _image_upload,
        _image_header,
    )
)

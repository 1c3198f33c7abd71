"""What `covidct serve` does with an upload before a model sees it: the request's form and sizes checked against the
input limits (read_upload), the bytes decoded (decode_upload) or a ZIP of a series unpacked member by member within its
limits (unpack_series_zip), and the memory all uploads in flight may hold (InflightBudget). Each refusal is an
InputError with the HTTP status to answer and a message naming the file and the limit."""

import io
import zlib
from pathlib import Path
from typing import Any

from fastapi import Request, UploadFile
from PIL import Image

from covidct.config import InputLimits
from covidct.data.inputs import DICOM, IMAGE, ZIP, kind_of_bytes, read_bytes
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import DataError

MULTIPART_OVERHEAD = 64 * 1024  # a request's body besides the file: boundaries and part headers


class InputError(Exception):
    """Bad input: an HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def upload_acquisition(data: bytes) -> Any:
    """How an upload was acquired (covidct.ood.acquisition): a DICOM file's header; an image file's shape. A header
    that cannot be read gives the kind alone (decode_upload says what is wrong with the file)."""
    from covidct.ood.acquisition import of_upload

    return of_upload(data)


def decode_upload(data: bytes, name: str, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """An uploaded file as an RGB image (data/inputs.py reads it), within the active input limits, or InputError
    with the status to answer."""
    if kind_of_bytes(data) not in (IMAGE, DICOM):
        raise InputError(
            415, f"{name}: unsupported file type; send a PNG, JPEG or DICOM (.dcm) file, or a ZIP of a series"
        )
    try:
        return read_bytes(data, name, window)
    except DataError as e:
        raise InputError(422, str(e)) from None


TOP_SLICES_SHOWN = 5  # pictures per series in the answer to a ZIP (each about 30-60 kB as a data URL)


def as_members(data: bytes, folder: Path) -> Any:
    """A function that says a message about the extracted files (folder/00000.dcm, ...) in the archive's own member
    names ("member 'series/IM1'"), and the folder as "the archive": what the client sent, not where it was put."""
    import re
    import zipfile

    names = [m.filename for m in zipfile.ZipFile(io.BytesIO(data)).infolist() if not m.is_dir()]
    pattern = re.compile(re.escape(str(folder)) + r"/(\d{5})\.dcm")

    def said(text: str) -> str:
        def member(match: re.Match) -> str:
            i = int(match.group(1))
            return f"member {names[i]!r}" if i < len(names) else match.group(0)

        return pattern.sub(member, text).replace(str(folder), "the archive")

    return said


def unpack_series_zip(data: bytes, name: str, target: Path, limits: InputLimits) -> Path:
    """Extract a ZIP of DICOM files after checking its members against `limits`: count, each member's and the total
    expanded size, compression ratio, and paths that would climb out of the target. InputError (413/422) names what
    is wrong, before anything is extracted; sizes are counted again while extracting (a member may lie about its
    size), and a refusal midway leaves the caller's temporary folder to be removed with the request."""
    import zipfile

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in zf.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as e:
        raise InputError(422, f"{name}: not a readable ZIP file ({e})") from None
    _check_members(members, name, limits)
    budget = limits.megabytes("expanded_mb")
    for i, m in enumerate(members):
        try:
            budget = _extract(zf, m, target / f"{i:05d}.dcm", budget, name, limits)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
            raise InputError(
                422, f"{name}: member {m.filename!r} cannot be expanded ({type(e).__name__}: {e})"
            ) from None
    return target


def _extract(zf: Any, member: Any, out: Path, budget: int, name: str, limits: InputLimits) -> int:
    """Copy one member out a MB at a time, its size counted against what it declares and what is left of the
    total; returns what is left."""
    with zf.open(member) as src, open(out, "wb") as dst:
        copied = 0
        while chunk := src.read(1024**2):
            copied += len(chunk)
            budget -= len(chunk)
            if copied > member.file_size:
                raise InputError(413, f"{name}: member {member.filename!r} is larger than it declares")
            if budget < 0:
                raise InputError(413, f"{name}: expands past the limit of {limits.expanded_mb:g} MB (expanded_mb)")
            dst.write(chunk)
    return budget


def _check_members(members: list[Any], name: str, limits: InputLimits) -> None:
    """The ZIP's directory checked against the limits, before a byte is expanded."""
    from pathlib import PurePosixPath

    if len(members) > limits.archive_members:
        raise InputError(
            413, f"{name}: {len(members)} files is over the limit of {limits.archive_members} (archive_members)"
        )
    total = sum(m.file_size for m in members)
    if total > limits.megabytes("expanded_mb"):
        raise InputError(
            413, f"{name}: {total:,} bytes expanded is over the limit of {limits.expanded_mb:g} MB (expanded_mb)"
        )
    for m in members:
        parts = PurePosixPath(m.filename.replace("\\", "/")).parts
        if PurePosixPath(m.filename).is_absolute() or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(422, f"{name}: member {m.filename!r} has a path that climbs out of the archive")
        if m.file_size > limits.megabytes("member_mb"):
            raise InputError(
                413,
                f"{name}: member {m.filename!r} expands to {m.file_size:,} bytes, over the limit "
                f"of {limits.member_mb:g} MB (member_mb)",
            )
        if m.file_size > limits.member_ratio * max(1, m.compress_size):
            raise InputError(
                413,
                f"{name}: member {m.filename!r} expands {m.file_size // max(1, m.compress_size)}x, "
                f"over the limit of {limits.member_ratio:g}x (member_ratio): refused as a zip bomb",
            )


def upload_schema(limits: InputLimits) -> dict[str, Any]:
    """The predict route's request body in the OpenAPI document (FastAPI cannot say the byte limits itself)."""
    series_limit, max_upload_mb = limits.megabytes("archive_mb"), limits.upload_mb
    what = f"a PNG, JPEG or DICOM file, or a ZIP of a DICOM series or study; 1 byte to {max_upload_mb:g} MB"
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "contentMediaType": "application/octet-stream",
                                "minLength": 1,
                                "maxLength": series_limit,
                                "description": what,
                            }
                        },
                    }
                }
            },
        }
    }


async def read_upload(request: Request, file: UploadFile, limits: InputLimits) -> bytes:
    """The uploaded bytes, or InputError: a parameter or form field the API does not know (refused, not dropped:
    '?cams=true' would silently return no heat map), a second file, an upload over the limits, an empty file.
    The body as a whole is bounded before this runs (the route's max_body_size); an image's own, smaller limit is
    checked on its first bytes and its size, before it is read."""
    unknown = sorted(set(request.query_params) - {"cam"})
    if unknown:
        raise InputError(422, f"unknown query parameter(s) {unknown}; this route takes: cam")
    form = await request.form()
    extra = sorted(set(form.keys()) - {"file"})
    if extra:
        raise InputError(422, f"unknown form field(s) {extra}; this route takes: file")
    if len(form.getlist("file")) > 1:
        raise InputError(
            422,
            f"{len(form.getlist('file'))} files in one request; send one image, DICOM or ZIP per "
            "request (a ZIP holds a series or study)",
        )
    name = file.filename or "upload"
    head = await file.read(8)
    await file.seek(0)
    is_zip = kind_of_bytes(head) == ZIP
    limit = limits.megabytes("archive_mb" if is_zip else "upload_mb")
    if file.size is not None and file.size > limit:
        raise InputError(413, f"{name}: {file.size:,} bytes is over the upload limit of {over(limits, is_zip)}")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise InputError(413, f"{name}: over the upload limit of {over(limits, is_zip)}")
    if not data:
        raise InputError(422, f"{name}: the file is empty")
    return data


def over(limits: InputLimits, is_zip: bool) -> str:
    return (
        f"{limits.archive_mb:g} MB for a ZIP (archive_mb)"
        if is_zip
        else f"{limits.upload_mb:g} MB for an image (upload_mb)"
    )


def body_limit_text(limits: InputLimits, declared: str | None) -> str:
    size = f" of {int(declared):,} bytes" if declared and declared.isdigit() else ""
    return (
        f"upload{size} is over the limit of {limits.archive_mb:g} MB for a ZIP (archive_mb) and "
        f"{limits.upload_mb:g} MB for an image (upload_mb)"
    )


RETRY_AFTER_S = 2  # what a client refused for load waits before it tries again


HELD_COPIES = 2  # copies of an upload's bytes a request holds while it is read and parsed


class InflightBudget:
    """The bytes that uploads in flight hold, all requests together, bounded (InputLimits.inflight_mb): a request
    that would pass the bound is refused at once (503 with Retry-After) rather than queued in memory. Taken and given
    back on the event loop's thread only, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size

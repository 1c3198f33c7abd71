"""Small uploads the tests and benchmarks/abuse.py make: PNG bytes, a PNG header that claims a pixel bomb's size,
and ZIP archives of given members."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A black PNG of width x height pixels."""
    return png_bytes(np.zeros((height, width), np.uint8))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose (valid) header claims width x height pixels, and no pixels: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def zip_of(members: dict[str, bytes]) -> bytes:
    """A deflated ZIP archive holding `members` (name: bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()

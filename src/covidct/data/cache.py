"""A decoded-image cache: decode (and shrink) each image once, keyed by the SHA-256 of the file's bytes.

A changed file has a new hash, so its old entry is simply never asked for again. Entries live in memory (LRU,
bounded by bytes) and, with a directory, also on disk as .npy files that later runs memory-map instead of decoding.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.data.images import load_rgb


def content_key(path: str | Path, shorter_side: int | None) -> str:
    """SHA-256 of the file's bytes, plus the size it is shrunk to."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"{digest}-{shorter_side or 'full'}"


def decode(path: str | Path, shorter_side: int | None) -> np.ndarray:
    """RGB uint8 H x W x 3; shrunk (never enlarged) so the shorter side is `shorter_side`."""
    img = load_rgb(path)
    if shorter_side and min(img.size) > shorter_side:
        w, h = img.size
        scale = shorter_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(img)


class DecodedCache:
    """get(path) returns exactly what `decode(path, shorter_side)` returns, decoding at most once per content."""

    def __init__(self, max_bytes: int = 2 << 30, shorter_side: int | None = None, directory: str | Path | None = None):
        self.max_bytes = max_bytes
        self.shorter_side = shorter_side
        self.directory = Path(directory) if directory else None
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, path: str | Path) -> np.ndarray:
        key = content_key(path, self.shorter_side)
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        array = self._from_disk(key)
        if array is None:
            array = decode(path, self.shorter_side)
            self._to_disk(key, array)
        self._remember(key, array)
        return array

    def _remember(self, key: str, array: np.ndarray) -> None:
        if array.nbytes > self.max_bytes:
            return
        self._entries[key] = array
        self.bytes += array.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes

    def _from_disk(self, key: str) -> np.ndarray | None:
        if self.directory is None or not (self.directory / f"{key}.npy").is_file():
            return None
        try:
            return np.load(self.directory / f"{key}.npy", mmap_mode="r")
        except (OSError, ValueError):  # a damaged entry is decoded again and rewritten
            return None

    def _to_disk(self, key: str, array: np.ndarray) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, self.directory / f"{key}.npy")

"""How predict reads its inputs: which reader takes each one, and image files read, preprocessed and checked a
batch ahead of the one being scored, by a worker thread (PIL, torchvision and numpy release the GIL while they work,
so reading overlaps the network: SPEED.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from covidct.data.inputs import STUDIES, VOLUME, Reader, read_slice, reader_for
from covidct.errors import DataError
from covidct.inference.loaded import LoadedModel
from covidct.ood.acquisition import of_file

BATCH = 16  # images per forward pass: 16 to 32 score fastest on 2 cores, in both backends (SPEED.md)
PREPARING_THREADS = 1  # decoding and preprocessing, beside the scoring threads


def input_runs(paths: list[Path]) -> Iterator[tuple[Path | list[Path], Reader | None]]:
    """The inputs in order, each with the reader that takes it (asked once here): each run of consecutive SLICE
    inputs (an image file, a DICOM slice, and a file no reader takes, which is skipped by name when read) as one
    list, scored in batches (its reader None); a folder of studies or a volume one by one."""
    run: list[Path] = []
    for path in paths:
        reader = reader_for(path)
        if reader is not None and reader.unit in (STUDIES, VOLUME):
            if run:
                yield run, None
            run = []
            yield path, reader
        else:
            run.append(path)
    if run:
        yield run, None


class PreparedBatch(NamedTuple):
    """A batch of image files as read a batch ahead: those read (paths, images, score_batch's arguments or None
    when none could be read, why each input's acquisition is unseen or None), and why the others were skipped."""

    paths: list[Path]
    images: list[Image.Image]
    arguments: tuple | None
    unseen: list[str | None]
    skipped: list[str]


def prepared_images(model: LoadedModel, paths: list[Path], window: tuple[float, float]) -> Iterator[PreparedBatch]:
    """The image files in batches of BATCH, each read, preprocessed and its acquisition checked (from its header)
    by the worker threads a batch ahead. A file that cannot be read is skipped with its reason (a DataError names
    the file): the rest of the folder is scored, as a DICOM folder's unreadable slices are."""
    from concurrent.futures import ThreadPoolExecutor

    def prepare(path: Path) -> tuple[Image.Image, tuple, str | None] | str:
        try:
            image = read_slice(path, window)
        except DataError as e:
            return str(e)
        return image, model.prepared([image]), model.unseen_acquisition(of_file(path))

    def batch(chunk: list[Path]) -> list:
        return [pool.submit(prepare, path) for path in chunk]

    chunks = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    with ThreadPoolExecutor(PREPARING_THREADS) as pool:
        pending = batch(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            done = [f.result() for f in pending]
            pending = batch(chunks[k + 1]) if k + 1 < len(chunks) else []
            read = [(path, d) for path, d in zip(chunk, done) if not isinstance(d, str)]
            yield PreparedBatch(
                paths=[path for path, _ in read],
                images=[d[0] for _, d in read],
                arguments=stacked([d[1] for _, d in read]),
                unseen=[d[2] for _, d in read],
                skipped=[d for d in done if isinstance(d, str)],
            )


def stacked(prepared: list[tuple]) -> tuple | None:
    """score_batch's arguments of several images' LoadedModel.prepared, as one batch (None for none)."""
    if not prepared:
        return None
    statistics = {name: np.concatenate([p[2][name] for p in prepared]) for name in prepared[0][2]}
    # numpy's copy, not torch.cat: torch's would start its thread pool against the network's (8x slower)
    batch_x = torch.from_numpy(np.concatenate([p[0].numpy() for p in prepared]))
    return batch_x, prepared[0][1], statistics

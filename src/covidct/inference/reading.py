"""How predict reads its inputs: which reader takes each one, and image files read, preprocessed and checked
ahead of the batch being scored, by worker threads that also run the network side by side when its graph allows
(PIL, numpy and ONNX Runtime release the GIL while they work, so the threads use every core: SPEED.md)."""

from __future__ import annotations

import itertools
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
# images per forward pass of a one-thread session (side by side): 1 to 4 run about 20% faster than 16 on one core of
# this project's CPU, their activations staying in the core's cache (SPEED.md)
SIDE_BY_SIDE_PASS = 4


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
    """A batch of image files as read ahead: those read (paths, images, score_batch's arguments or None when none
    could be read, why each input's acquisition is unseen or None), why the others were skipped, and the forward
    pass's (logits, features) when a worker ran it (else None: the caller runs it)."""

    paths: list[Path]
    images: list[Image.Image]
    arguments: tuple | None
    unseen: list[str | None]
    skipped: list[str]
    forward: tuple | None = None


def prepared_images(
    model: LoadedModel, paths: list[Path], window: tuple[float, float], keep_images: bool = False
) -> Iterator[PreparedBatch]:
    """The image files in batches of BATCH, in order, each read, preprocessed and its acquisition checked (from its
    header) by worker threads ahead of the batch the caller is at. Where the model's graph can score side by side
    (LoadedModel.side_by_side), the workers run the forward pass too, a batch each on one core; otherwise one worker
    reads and the caller runs the network. A file that cannot be read is skipped with its reason (a DataError names
    the file): the rest of the folder is scored, as a DICOM folder's unreadable slices are. The decoded pictures
    come back only with `keep_images` (heat maps): a batch in flight holds its preprocessed arrays, so that memory
    does not grow with the workers by up to InputLimits.pixels a picture."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    session, workers = model.side_by_side()

    def read(path: Path) -> tuple[Image.Image | None, tuple, str | None] | str:
        try:
            image = read_slice(path, window)
        except DataError as e:
            return str(e)
        return image if keep_images else None, model.prepared([image]), model.unseen_acquisition(of_file(path))

    def prepare(chunk: list[Path]) -> PreparedBatch:
        done = [read(path) for path in chunk]
        kept = [(path, d) for path, d in zip(chunk, done) if not isinstance(d, str)]
        arguments = stacked([d[1] for _, d in kept])
        forward = in_passes(model, arguments[0], arguments[1], session) if session and arguments else None
        images = [d[0] for _, d in kept] if keep_images else []
        skipped = [d for d in done if isinstance(d, str)]
        return PreparedBatch([p for p, _ in kept], images, arguments, [d[2] for _, d in kept], skipped, forward)

    chunks = iter([paths[i : i + BATCH] for i in range(0, len(paths), BATCH)])
    with ThreadPoolExecutor(workers) as pool:  # side_by_side gives at least one: it reads while the caller scores
        pending = deque(pool.submit(prepare, chunk) for chunk in itertools.islice(chunks, workers + 1))
        while pending:
            batch = pending.popleft().result()
            for chunk in itertools.islice(chunks, 1):
                pending.append(pool.submit(prepare, chunk))
            yield batch


def in_passes(model: LoadedModel, x: torch.Tensor, features: bool, session: object) -> tuple:
    """LoadedModel.forward of a batch in passes of SIDE_BY_SIDE_PASS images, joined (with numpy: torch.cat would
    start torch's thread pool in the worker thread)."""
    passes = [
        model.forward(x[i : i + SIDE_BY_SIDE_PASS], features, session) for i in range(0, len(x), SIDE_BY_SIDE_PASS)
    ]
    logits = torch.from_numpy(np.concatenate([p[0].numpy() for p in passes]))
    return logits, torch.from_numpy(np.concatenate([p[1].numpy() for p in passes])) if features else None


def stacked(prepared: list[tuple]) -> tuple | None:
    """score_batch's arguments of several images' LoadedModel.prepared, as one batch (None for none)."""
    if not prepared:
        return None
    statistics = {name: np.concatenate([p[2][name] for p in prepared]) for name in prepared[0][2]}
    # numpy's copy, not torch.cat: torch's would start its thread pool in each worker thread (8x slower)
    batch_x = torch.from_numpy(np.concatenate([p[0].numpy() for p in prepared]))
    return batch_x, prepared[0][1], statistics

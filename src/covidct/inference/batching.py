"""How `covidct serve` shares the cores between concurrent requests: FairSlots (at most N scoring at once, served in
the order they asked) and dynamic batching (Batcher): the images of concurrent requests, gathered for at most a few
milliseconds, scored as one batch by one thread that uses every core (the network's intra-op threads), while the
requests' own threads decode the next uploads. Each request gets back exactly what scoring it alone gives (its
score, its detector score and its features for the shift window): every image's numbers are computed independently
of the others in its batch (tests/integration/test_speed_paths.py).

Written here rather than taken from a serving framework (Triton, TorchServe, Ray Serve): those are servers of their
own around a model; covidct serve is one FastAPI process, and what it needs is a queue and a thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import numpy as np
from PIL import Image

from covidct.inference.loaded import LoadedModel
from covidct.inference.reading import stacked

# What one image's scoring gives back: (score (1,), detector score (1,) or None, its features and image statistics
# as LoadedModel.collecting gathers them, for the shift window)
Scored = tuple[np.ndarray, np.ndarray | None, list[tuple[np.ndarray, dict[str, np.ndarray]]]]


class Batcher:
    """Scores images submitted from many threads in batches of up to `max_batch`, each batch closed `wait_ms` after
    its first image arrived (or when full). One daemon thread; `score` blocks its caller until its image is scored."""

    def __init__(self, model: LoadedModel, wait_ms: float = 5.0, max_batch: int = 16) -> None:
        self.model, self.wait, self.max_batch = model, wait_ms / 1000.0, max_batch
        self.queue: queue.Queue[tuple[tuple, Future]] = queue.Queue()
        self.batches = 0  # how many batches were scored, and how many images they held (GET /api/v1/model)
        self.images = 0
        threading.Thread(target=self._loop, name="covidct-batcher", daemon=True).start()

    def card(self) -> dict[str, Any]:
        """The settings and what they did so far: the mean batch is how many requests one forward pass served."""
        mean = self.images / self.batches if self.batches else None
        return {"wait_ms": self.wait * 1000.0, "max_batch": self.max_batch, "batches": self.batches, "mean_batch": mean}

    def score(self, image: Image.Image) -> Scored:
        """The image preprocessed here (in the caller's thread), scored in the next batch."""
        done: Future = Future()
        self.queue.put((self.model.prepared([image]), done))
        return done.result()

    def _loop(self) -> None:
        while True:
            items = [self.queue.get()]
            closes = time.monotonic() + self.wait
            while len(items) < self.max_batch:
                left = closes - time.monotonic()
                try:
                    items.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            self._score(items)

    def _score(self, items: list[tuple[tuple, Future]]) -> None:
        try:
            x, check, statistics = stacked([prepared for prepared, _ in items])
            with self.model.collecting() as outputs:
                scores, ood = self.model.score_batch(x, check, statistics)
        except Exception as e:  # every waiting request gets the error, and the thread goes on serving
            for _, done in items:
                done.set_exception(e)
            return
        self.batches, self.images = self.batches + 1, self.images + len(items)
        features, gathered = outputs[0] if outputs else (None, {})
        for k, (_, done) in enumerate(items):
            own = (
                [(features[k : k + 1], {n: v[k : k + 1] for n, v in gathered.items()})] if features is not None else []
            )
            done.set_result((scores[k : k + 1].numpy(), None if ood is None else ood[k : k + 1], own))


class FairSlots:
    """At most `n` holders at once, the others served in the order they asked: a freed slot goes straight to the
    longest waiter. threading.Semaphore lets a newly arrived thread take a freed slot before the waiters wake,
    which under load left some requests waiting several turns (p95 twice the median at concurrency 8, SPEED.md)."""

    def __init__(self, n: int) -> None:
        self.lock = threading.Lock()
        self.free = n
        self.waiters: deque[threading.Event] = deque()

    def __enter__(self) -> FairSlots:
        with self.lock:
            if self.free and not self.waiters:
                self.free -= 1
                return self
            turn = threading.Event()
            self.waiters.append(turn)
        turn.wait()  # the slot was handed over by __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            if self.waiters:
                self.waiters.popleft().set()
            else:
                self.free += 1

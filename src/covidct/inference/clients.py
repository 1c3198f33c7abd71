"""Who calls the server and what they sent: the API keys (each key a client, named by its place in the list) and
each client's rolling window of recent images for the batch shift test."""

from __future__ import annotations

import secrets
import threading
from typing import Annotated, Any

from fastapi import Header, HTTPException

from covidct.inference.loaded import LoadedModel


class ShiftWindow:
    """The features and image statistics of the last `size` images scored (a rolling window of the traffic), and the
    batch shift test of them on request (covidct.ood.shift): a site's images as a whole against the model's
    validation images. Thread-safe; the test runs on a copy, outside the lock."""

    def __init__(self, size: int = 200) -> None:
        from collections import deque

        self.size, self.lock = size, threading.Lock()
        self.items: Any = deque(maxlen=size)

    def add(self, outputs: list[tuple[Any, dict[str, Any]]]) -> None:
        with self.lock:
            for features, statistics in outputs:
                for i in range(len(features)):
                    self.items.append((features[i : i + 1], {k: v[i : i + 1] for k, v in statistics.items()}))

    def test(self, model: LoadedModel) -> dict[str, Any]:
        with self.lock:
            outputs = list(self.items)
        return {**model.batch_shift(outputs), "window": self.size}


def key_checker(api_key: str | list[str] | None) -> Any:
    """The dependency of every /api/ route: the caller's client name ("key 1", "key 2", ... by the key's place in
    the list; "" when the server has no keys), or 401."""
    keys = [api_key] if isinstance(api_key, str) else list(api_key or [])

    def check_key(x_api_key: Annotated[str | None, Header()] = None) -> str:
        if not keys:
            return ""
        for k, key in enumerate(keys, start=1):
            if x_api_key and secrets.compare_digest(x_api_key, key):
                return f"key {k}"
        raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    return check_key

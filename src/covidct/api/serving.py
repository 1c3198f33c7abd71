"""covidct.api's server: the REST API as a FastAPI app (`app`) and `serve` with uvicorn."""

from __future__ import annotations

from typing import Any

from covidct.api.model import Model, PathLike, load
from covidct.config import ServeSettings


def app(model: Model | PathLike, settings: ServeSettings | None = None) -> Any:
    """The REST API of `covidct serve` as a FastAPI app, for a test client or to mount in another server (the same
    routes, limits, API keys and shift window; settings: a ServeSettings).

    Example::

        from fastapi.testclient import TestClient
        client = TestClient(cct.app("runs/demo/export"))
        client.post("/api/v1/predict", files={"file": open("slice.png", "rb")}).json()
    """
    from covidct.inference.serve import app_for

    loaded = model.loaded if isinstance(model, Model) else load(model).loaded
    return app_for(loaded, settings or ServeSettings())


def serve(
    model: Model | PathLike, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None
) -> None:
    """`covidct serve`: the model's web page and REST API with uvicorn, until stopped (a path is loaded once, with a
    thread per core when batching)."""
    from covidct.inference.serve import serve as run_server

    run_server(model.loaded if isinstance(model, Model) else model, host, port, settings)

"""`covidct serve`: a FastAPI app (REST API + a web page) around one loaded model, run by uvicorn.

Routes: GET /health; GET /api/v1/model (the model card); POST /api/v1/predict (multipart field `file`: a PNG, JPEG or
DICOM file; `?cam=true` adds a Grad-CAM overlay as a PNG data URL); GET /api/v1/shift (the batch shift test of the last
images scored, covidct.ood.shift); GET / (the web page); /docs (the routes, and /openapi.json). Every /api/ route checks
the API key when keys are set (header X-API-Key; one key per client, each with its own shift window). The model is
loaded once; inference runs in worker threads, at most one per core at a time, each with one intra-op thread, so
parallel requests use the cores without oversubscribing them, served in the order they came (FairSlots), or gathered
into batches (--batch-wait-ms, inference/batching.py). Limits (covidct.config.InputLimits, one declared policy, each a
flag of `covidct serve`): a body over the archive limit is refused on its Content-Length or as it streams in, before it
is stored (413); an image over its upload limit, a ZIP over its member count or expanded size (413), an image over the
pixel limit or under the minimum side, a DICOM that would decode or inflate past its limit (422): each checked before
decoding, each answer naming the limit and the value. Other bad input -> 4xx with a JSON {"detail": ...} that says what
is wrong. The server keeps serving after any of them.
"""

import asyncio
import base64
import io
import os
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from covidct import DISCLAIMER, __version__
from covidct.config import INPUT_LIMITS, InputLimits, ServeSettings
from covidct.data.inputs import DICOM, ZIP, kind_of_bytes
from covidct.errors import DataError
from covidct.inference.batching import Batcher, FairSlots
from covidct.inference.clients import ShiftWindow, key_checker
from covidct.inference.loaded import LoadedModel
from covidct.inference.schemas import Health, ImagePrediction, SeriesPrediction, error_responses
from covidct.inference.uploads import (
    HELD_COPIES,
    MULTIPART_OVERHEAD,
    RETRY_AFTER_S,
    TOP_SLICES_SHOWN,
    InflightBudget,
    InputError,
    as_members,
    body_limit_text,
    decode_upload,
    read_upload,
    unpack_series_zip,
    upload_acquisition,
    upload_schema,
)

PAGE = Path(__file__).parent.parent / "templates" / "app.html"


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Predictor:
    """The model, and a bound on how many inferences run at once (one per core, one thread each)."""

    def __init__(
        self,
        model: LoadedModel,
        limits: InputLimits = INPUT_LIMITS,
        workers: int | None = None,
        window: int = 200,
        batcher: Batcher | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.window_size = window
        self.windows: dict[str, ShiftWindow] = {}  # one per client (its API key's place in the list; "" without keys)
        self.windows_lock = threading.Lock()
        self.batcher = batcher  # None: each request scored alone in its worker
        self.workers = workers or max(1, os.cpu_count() or 1) * (2 if batcher else 1)  # decoding beside the batch
        self.slots = FairSlots(self.workers)
        # Grad-CAM hooks the shared model's layers: one explanation at a time (scores stay parallel).
        self.cam_lock = threading.Lock()

    def window(self, client: str = "") -> ShiftWindow:
        """The shift window of one client's traffic: each API key's images are tested as their own batch (a site's
        shift is not diluted by another site's images)."""
        with self.windows_lock:
            return self.windows.setdefault(client, ShiftWindow(self.window_size))

    def handle(self, data: bytes, name: str, cam: bool, client: str = "") -> dict[str, Any]:
        """Decode an upload and predict (InputError for bad input), within the server's input limits; the image
        joins `client`'s shift window."""
        with self.slots, self.limits.applied():
            kind = kind_of_bytes(data)
            if kind == ZIP:
                return self.predict_series(data, name, cam)
            image = decode_upload(data, name)
            answer = self.predict(image, cam, upload_acquisition(data), client)
            # a browser cannot show a DICOM file: the page shows the slice as it was read (lung window) instead,
            # whatever the file's name; the heat map goes over it once
            answer["preview"] = png_data_url(image) if kind == DICOM else None
            return answer

    def predict_series(self, data: bytes, name: str, cam: bool = False) -> dict[str, Any]:
        """A ZIP of a DICOM series or study: scored as `covidct predict` scores a folder. Each series' top slices
        come back as pictures in the lung window (with their Grad-CAM heat maps under ?cam=true)."""
        import tempfile

        from covidct.inference.predict import predict_inputs

        with tempfile.TemporaryDirectory(prefix="covidct-upload-") as tmp:
            folder = unpack_series_zip(data, name, Path(tmp), self.limits)
            said = as_members(data, folder)
            report: dict[str, Any] = {}
            try:
                predict_inputs(self.model, [folder], report=report)
            except DataError as e:
                raise InputError(422, f"{name}: {said(str(e))}") from None
            for study in report["studies"]:
                study.pop("folder", None)
                for series in study["series"]:
                    self._top_slice_pictures(series.get("top_slices", []), cam)
        keep = ("studies", "skipped", "aggregation", "study_rule", "threshold", "ood_check", "shift")
        out = {k: report[k] for k in keep}
        out["skipped"] = [said(x) for x in out["skipped"]]
        return {**out, "model": self.model.model_id, "disclaimer": DISCLAIMER}

    def _top_slice_pictures(self, tops: list[dict[str, Any]], cam: bool) -> None:
        """Replace each top slice's file path (a temporary file) by its picture as a PNG data URL."""
        from covidct.inference.explain import dicom_top_slices, explain, overlay

        shown = tops[:TOP_SLICES_SHOWN]
        images = dicom_top_slices(shown)
        if cam and images:
            with self.cam_lock:
                images = [overlay(img, heat) for img, heat in zip(images, explain(self.model, images))]
        for top, img in zip(shown, images):
            img.thumbnail((256, 256))
            top["image"] = png_data_url(img)
        for top in tops:
            top.pop("file", None)

    def predict(self, image: Image.Image, cam: bool, acquisition: Any = None, client: str = "") -> dict[str, Any]:
        """Score (and explain) one decoded image; callers hold a slot. `acquisition`: the upload's
        (covidct.ood.acquisition), checked against what the model was trained on."""
        from covidct.inference.explain import explain, overlay

        if self.batcher is not None:
            scores, ood, outputs = self.batcher.score(image)
        else:
            with self.model.collecting() as outputs:
                scores, ood = self.model.score_images([image])
        self.window(client).add(outputs)
        unseen = None if acquisition is None else self.model.unseen_acquisition(acquisition)
        v = self.model.verdict(float(scores[0]), None if ood is None else float(ood[0]), unseen)
        heat = None
        if cam:
            with self.cam_lock:
                heat = overlay(image, explain(self.model, [image])[0])
        return {
            "score": round(v.score, 6),
            "label": v.label,
            "threshold": v.threshold,
            "positive_class": self.model.class_names[1],
            "model": self.model.model_id,
            "cam": png_data_url(heat) if heat is not None else None,
            "cam_explains": self.model.heat_map_explains if heat is not None else None,
            "in_distribution": v.in_distribution,
            "ood_reason": v.ood_reason,
            "ood_score": None if v.ood_score is None else round(v.ood_score, 4),
            "ood_threshold": None if self.model.ood is None else float(self.model.ood.threshold),
            "disclaimer": DISCLAIMER,
        }


def install_error_handlers(app: FastAPI, limits: InputLimits) -> None:
    """Every error answer is {"detail": "one string"} (ErrorDetail)."""

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own 422 has a list as `detail`; covidct's errors are all one string (ErrorDetail)."""
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: {e.get('msg', '')}" for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 413 and detail == "Content Too Large":  # FastAPI's max_body_size, as the body streamed
            detail = body_limit_text(limits, request.headers.get("content-length"))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def docs_page(app: FastAPI) -> str:
    """A plain page of the routes, linking the OpenAPI document (/openapi.json) for any OpenAPI viewer."""
    import html

    rows = "".join(
        f"<li><code>{method.upper()} {html.escape(path)}</code>: {html.escape(op.get('summary', ''))}</li>"
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>covidct API</title><h1>covidct API</h1>"
        f"<p>The OpenAPI document: <a href=/openapi.json>/openapi.json</a> (open it in any OpenAPI viewer). "
        f"Routes:</p><ul>{rows}</ul><p>{html.escape(DISCLAIMER)}</p>"
    )


def create_app(
    model: LoadedModel,
    api_key: str | list[str] | None = None,
    limits: InputLimits = INPUT_LIMITS,
    shift_window: int = 200,
    batch_wait_ms: float = 0.0,
) -> FastAPI:
    """The FastAPI app around `model`, refusing inputs over `limits`; the batch shift test over the last
    `shift_window` images scored; concurrent images gathered for up to `batch_wait_ms` and scored as one batch
    (0: each request scored alone, one per core)."""
    from starlette.formparsers import MultiPartParser

    batcher = Batcher(model, batch_wait_ms) if batch_wait_ms > 0 else None
    predictor = Predictor(model, limits, window=shift_window, batcher=batcher)
    body_limit = max(limits.megabytes("upload_mb"), limits.megabytes("archive_mb")) + MULTIPART_OVERHEAD
    # An upload within the body limit is held in memory, not spooled to a temporary file (Starlette's default above
    # 1 MB): a request then writes to disk only a ZIP's expanded members (expanded_mb). Starlette has no per-app
    # setting for it; serve runs one app per process.
    MultiPartParser.spool_max_size = body_limit
    app = FastAPI(
        title="covidct",
        description=f"COVID-19 classification of chest CT images. {DISCLAIMER}",
        version=model.card.covidct_version or __version__,  # FastAPI needs one for OpenAPI
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN: blank offline; /docs says where to look
        redoc_url=None,
    )
    install_error_handlers(app, limits)
    refuse_declared_bodies_over(app, body_limit, limits)
    add_pages(app)

    check_key = key_checker(api_key)
    add_reading_routes(app, predictor, check_key)

    @app.post(
        "/api/v1/predict",
        response_model=ImagePrediction | SeriesPrediction,
        responses=error_responses(401, 413, 415, 422, 503),
        openapi_extra=upload_schema(limits),
        max_body_size=body_limit,
        form_limits={"max_files": 2},  # two are refused by name (read_upload); more stop the parser at once
    )
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File()],
        client: Annotated[str, Depends(check_key)],
        cam: bool = False,
    ) -> dict[str, Any]:
        data = await read_upload(request, file, limits)
        if cam and model.module is None:
            raise InputError(422, "this server loaded an ONNX model only; Grad-CAM needs the safetensors export")
        # Decoding and inference run in a worker thread: the event loop keeps accepting requests meanwhile.
        return await asyncio.to_thread(predictor.handle, data, file.filename or "upload", cam, client)

    return app


def add_reading_routes(app: FastAPI, predictor: Predictor, check_key: Any) -> None:
    """The routes that read the server's state: liveness, the model card with the limits, the caller's recent
    traffic's shift test (all but liveness behind the API key: `check_key` names the caller)."""
    model, limits = predictor.model, predictor.limits
    auth = [Depends(check_key)]

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.model_id}

    @app.get("/api/v1/model", dependencies=auth, responses=error_responses(401))
    def model_card() -> dict[str, Any]:
        runtime = "onnxruntime" if model.session is not None else "pytorch"
        serving = {
            "max_upload_mb": limits.upload_mb,
            "max_pixels": limits.pixels,
            "limits": limits.to_dict(),
            "workers": predictor.workers,
            "runtime": runtime,
            "shift_window": predictor.window_size,
            "batching": None if predictor.batcher is None else predictor.batcher.card(),
        }
        return {**model.card.to_dict(), "serving": serving}

    @app.get("/api/v1/shift", responses=error_responses(401))
    async def shift(client: Annotated[str, Depends(check_key)]) -> dict[str, Any]:
        """The batch shift test of the last images this caller sent (its API key's window; every caller's when the
        server has no keys) against the model's validation images."""
        record = await asyncio.to_thread(predictor.window(client).test, model)
        return {**record, "client": client or None}


def refuse_declared_bodies_over(app: FastAPI, body_limit: int, limits: InputLimits) -> None:
    """A body whose Content-Length is over the limit is answered 413 before a byte of it is read. FastAPI's
    max_body_size (on the predict route) counts the bytes of a body that does not declare its length, or lies; it
    also refuses a declared one, but with a plain-text answer that names no limit, hence this check first."""

    budget = app.state.inflight = InflightBudget(limits.megabytes("inflight_mb"))

    @app.middleware("http")
    async def declared_length(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > body_limit:
            return JSONResponse({"detail": body_limit_text(limits, declared)}, status_code=413)
        if request.method != "POST":
            return await call_next(request)
        # what this request may hold: its body twice (as it streams in, and the form's copy of the file; measured:
        # six concurrent 95 MB archives grew the server by 571 MB when each was counted once), of its declared length
        # or of the most any body may be when it declares none
        size = HELD_COPIES * (int(declared) if declared and declared.isdigit() else body_limit)
        if not budget.take(size):
            detail = (
                f"the server holds {budget.held:,} bytes of uploads in flight; this one ({size:,} bytes) would pass "
                f"the limit of {limits.inflight_mb:g} MB (inflight_mb): retry shortly"
            )
            return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await call_next(request)
        finally:
            budget.give(size)


def add_pages(app: FastAPI) -> None:
    """The web page (/) and the API's description (/docs), both with nothing loaded from elsewhere."""

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        """Where the API is described, offline: the OpenAPI document and its routes (no scripts from a CDN)."""
        return docs_page(app)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8").replace("{{DISCLAIMER}}", DISCLAIMER)


def serve(
    model: str | Path | LoadedModel, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None
) -> None:
    """Serve the model (loaded once: a path, or a LoadedModel) with uvicorn (one process; parallelism inside, see
    Predictor)."""
    import torch
    import uvicorn

    from covidct.inference.load import load_trained as load_model

    # Requests scored alone run one per core with one thread each; batches run one at a time on every core.
    s = settings or ServeSettings()
    threads = max(1, os.cpu_count() or 1) if s.batch_wait_ms > 0 else 1
    loaded = model if isinstance(model, LoadedModel) else load_model(model, threads=threads)
    torch.set_num_threads(threads)
    uvicorn.run(app_for(loaded, s), host=host, port=port, log_level="info")


def app_for(model: LoadedModel, settings: ServeSettings) -> FastAPI:
    """create_app by the settings (the API keys given, else $COVIDCT_API_KEY's)."""
    return create_app(model, settings.keys(), settings.limits, settings.shift_window, settings.batch_wait_ms)


def openapi_document(limits: InputLimits = INPUT_LIMITS) -> dict[str, Any]:
    """The REST API's OpenAPI document, without a model (the docs' reference is generated from it): the app is built
    around a card alone, which routes never reach while nothing is served."""
    from covidct.data.preprocessing import Preprocessing
    from covidct.runs.model_card import ModelCard

    card = ModelCard("any", Preprocessing(), ["NonCOVID", "COVID"], threshold=0.5)
    return create_app(LoadedModel(card=card), limits=limits).openapi()

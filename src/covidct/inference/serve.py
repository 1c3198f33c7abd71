"""`covidct serve`: a FastAPI app (REST API + a web page) around one loaded model, run by uvicorn.

Routes: GET /health; GET /api/v1/model (the model card); POST /api/v1/predict (multipart field `file`: a PNG,
JPEG or DICOM file; `?cam=true` adds a Grad-CAM overlay as a PNG data URL); GET / (the web page); /docs (OpenAPI).
Every /api/ route checks the API key when one is set (header X-API-Key). The model is loaded once; inference runs
in worker threads, at most one per core at a time, each with one intra-op thread, so parallel requests use the
cores without oversubscribing them. Limits: uploads over MAX_UPLOAD_MB -> 413; images over MAX_PIXELS -> 422
(checked from the header, before decoding: no decompression bombs); other bad input -> 4xx with a JSON
{"detail": ...} that says what is wrong. The server keeps serving after any of them.
"""

import asyncio
import base64
import io
import os
import secrets
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from covidct import DISCLAIMER, __version__
from covidct.data.images import to_rgb
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import DataError
from covidct.inference.load import LoadedModel

MAX_UPLOAD_MB = 20
MAX_PIXELS = 50_000_000  # 50 megapixels: far above any CT slice, far below what exhausts memory
API_KEY_ENV = "COVIDCT_API_KEY"
PAGE = Path(__file__).parent.parent / "templates" / "app.html"


class ErrorDetail(BaseModel):
    """Every error covidct's API answers: one sentence naming the file or field and what is wrong."""

    detail: str = Field(description="what is wrong, naming the file or field")


class Prediction(BaseModel):
    score: float = Field(ge=0, le=1, description="probability of the positive class")
    label: str
    threshold: float
    positive_class: str
    model: str
    cam: str | None = Field(None, description="Grad-CAM overlay as a PNG data URL (with ?cam=true)")
    disclaimer: str


class Health(BaseModel):
    status: str
    model: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "missing or wrong API key (header X-API-Key)", 413: "upload over the size limit",
            415: "not a PNG, JPEG or DICOM file (judged by its bytes)",
            422: "empty, truncated or undecodable file, too many pixels, no pixel data, or a bad field"}  # fmt: skip
    return {code: {"model": ErrorDetail, "description": text[code]} for code in codes}


class InputError(Exception):
    """Bad input: an HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def sniff(data: bytes) -> str:
    """'png', 'jpeg', 'dicom' or '' from the first bytes (the file name and declared type are not trusted)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return ""


def decode_upload(data: bytes, name: str, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """An uploaded file as an RGB image, or InputError with the status to answer."""
    kind = sniff(data)
    if not kind:
        raise InputError(415, f"{name}: unsupported file type; send a PNG, JPEG or DICOM (.dcm) file")
    if kind == "dicom":
        import pydicom

        from covidct.data.medical import dicom_grey

        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as e:
            raise InputError(422, f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from None
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        if rows * cols > MAX_PIXELS:
            raise InputError(422, f"{name}: {cols}x{rows} pixels is over the limit of {MAX_PIXELS:,}")
        try:
            return dicom_grey(ds, name, window)
        except DataError as e:
            raise InputError(422, str(e)) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(422, f"{name}: {w}x{h} pixels is over the limit of {MAX_PIXELS:,}")
            img.load()
            return to_rgb(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            422, f"{name}: the image cannot be decoded, it may be truncated ({type(e).__name__})"
        ) from None


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Predictor:
    """The model, and a bound on how many inferences run at once (one per core, one thread each)."""

    def __init__(self, model: LoadedModel, workers: int | None = None) -> None:
        self.model = model
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.slots = threading.BoundedSemaphore(self.workers)
        # Grad-CAM hooks the shared model's layers: one explanation at a time (scores stay parallel).
        self.cam_lock = threading.Lock()

    def handle(self, data: bytes, name: str, cam: bool) -> dict[str, Any]:
        """Decode an upload and predict (InputError for bad input)."""
        with self.slots:
            return self.predict(decode_upload(data, name), cam)

    def predict(self, image: Image.Image, cam: bool) -> dict[str, Any]:
        """Score (and explain) one decoded image; callers hold a slot."""
        from covidct.inference.explain import explain, overlay

        score = float(self.model.scores([image])[0])
        heat = None
        if cam:
            with self.cam_lock:
                heat = overlay(image, explain(self.model, [image])[0])
        t = self.model.threshold
        names = self.model.card["class_names"]
        return {
            "score": round(score, 6),
            "label": names[1] if score >= t else names[0],
            "threshold": t,
            "positive_class": names[1],
            "model": self.model.model_id,
            "cam": png_data_url(heat) if heat is not None else None,
            "disclaimer": DISCLAIMER,
        }


def create_app(model: LoadedModel, api_key: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB) -> FastAPI:
    """The FastAPI app around `model`."""

    predictor = Predictor(model)
    limit = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(
        title="covidct",
        description=f"COVID-19 classification of chest CT images. {DISCLAIMER}",
        version=str(model.card.get("covidct_version") or __version__),  # FastAPI needs one for OpenAPI
    )

    def check_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key and not (x_api_key and secrets.compare_digest(x_api_key, api_key)):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

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
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.model_id}

    @app.get("/api/v1/model", dependencies=[Depends(check_key)], responses=_errors(401))
    def model_card() -> dict[str, Any]:
        return {**model.card, "serving": {"max_upload_mb": max_upload_mb, "max_pixels": MAX_PIXELS,
                                          "workers": predictor.workers, "runtime": "onnxruntime" if model.session
                                          is not None else "pytorch"}}  # fmt: skip

    @app.post(
        "/api/v1/predict",
        dependencies=[Depends(check_key)],
        response_model=Prediction,
        responses=_errors(401, 413, 415, 422),
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"], "properties": {"file": {
                "type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                "minLength": 1, "maxLength": limit,
                "description": f"a PNG, JPEG or DICOM file, 1 byte to {max_upload_mb:g} MB"}}}}}}},
    )  # fmt: skip
    async def predict(request: Request, file: Annotated[UploadFile, File()], cam: bool = False) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise InputError(413, f"upload of {int(declared):,} bytes is over the limit of {max_upload_mb:g} MB")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise InputError(413, f"{file.filename}: over the upload limit of {max_upload_mb:g} MB")
        if not data:
            raise InputError(422, f"{file.filename}: the file is empty")
        if cam and model.module is None:
            raise InputError(422, "this server loaded an ONNX model only; Grad-CAM needs the safetensors export")
        # Decoding and inference run in a worker thread: the event loop keeps accepting requests meanwhile.
        return await asyncio.to_thread(predictor.handle, data, file.filename or "upload", cam)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8").replace("{{DISCLAIMER}}", DISCLAIMER)

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> None:
    """Load the model once and serve it with uvicorn (one process; parallelism inside, see Predictor)."""
    import torch
    import uvicorn

    from covidct.inference.load import load_trained as load_model

    model = load_model(model_path, threads=1)
    torch.set_num_threads(1)  # parallel requests (one per core, see Predictor), not parallel ops inside one
    app = create_app(model, api_key or os.environ.get(API_KEY_ENV) or None)
    uvicorn.run(app, host=host, port=port, log_level="info")

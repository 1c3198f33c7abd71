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

MAX_UPLOAD_MB = 20  # one image
MAX_SERIES_MB = 512  # a ZIP of a series or study
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
    in_distribution: bool | None = Field(
        None,
        description="false: the image does not look like the images the "
        "model was trained on, and its score means little; null: no detector",
    )
    ood_score: float | None = Field(None, description="out-of-distribution score (higher: less like training)")
    ood_threshold: float | None = Field(None, description="ood_score above this: flagged")
    ood_reason: str | None = Field(
        None,
        description="why the image is flagged: unlike the training images, or (DICOM) a scanner acquisition "
        "the training images did not hold; empty when it is not flagged",
    )
    disclaimer: str


class SeriesPrediction(BaseModel):
    """The answer to a ZIP of a DICOM series or study: one result per study (from its series) and per series."""

    studies: list[dict[str, Any]]
    skipped: list[str]
    aggregation: str
    study_rule: str
    threshold: float
    ood_check: str | None = Field(
        None,
        description="the rule by which a series or study is out of distribution "
        "(each has ood_fraction and in_distribution), or 'unavailable'",
    )
    model: str
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
    if data.startswith(b"PK\x03\x04"):
        return "zip"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return ""


def upload_acquisition(data: bytes) -> Any:
    """How an upload was acquired (covidct.ood.acquisition): a DICOM file's header; an image file's shape. A header
    that cannot be read gives the kind alone (decode_upload says what is wrong with the file)."""
    from covidct.ood.acquisition import DICOM, Acquisition, from_dicom_header, image_acquisition

    if sniff(data) != "dicom":
        return image_acquisition(io.BytesIO(data))
    import pydicom

    try:
        return from_dicom_header(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
    except Exception:  # pydicom raises many kinds; decode_upload answers 422 for the same bytes
        return Acquisition(DICOM)


def decode_upload(data: bytes, name: str, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """An uploaded file as an RGB image, or InputError with the status to answer."""
    kind = sniff(data)
    if not kind:
        raise InputError(
            415, f"{name}: unsupported file type; send a PNG, JPEG or DICOM (.dcm) file, or a ZIP of a series"
        )
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


TOP_SLICES_SHOWN = 5  # pictures per series in the answer to a ZIP (each about 30-60 kB as a data URL)
MAX_ZIP_FILES = 2000  # a CT study is a few hundred slices per series
MAX_ZIP_BYTES = 2 * 1024**3  # uncompressed, all members together
MAX_ZIP_RATIO = 200  # uncompressed / compressed of a member: above it, a zip bomb (CT compresses about 2-4x)


def unpack_series_zip(data: bytes, name: str, target: Path) -> Path:
    """Extract a ZIP of DICOM files after checking its members: count, total size, compression ratio, and paths
    that would climb out of the target. InputError (413/422) names what is wrong; nothing is extracted then."""
    import zipfile
    from pathlib import PurePosixPath

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in zf.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as e:
        raise InputError(422, f"{name}: not a readable ZIP file ({e})") from None
    if len(members) > MAX_ZIP_FILES:
        raise InputError(413, f"{name}: {len(members)} files is over the limit of {MAX_ZIP_FILES}")
    total = sum(m.file_size for m in members)
    if total > MAX_ZIP_BYTES:
        raise InputError(413, f"{name}: {total:,} bytes uncompressed is over the limit of {MAX_ZIP_BYTES:,}")
    for m in members:
        parts = PurePosixPath(m.filename.replace("\\", "/")).parts
        if PurePosixPath(m.filename).is_absolute() or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(422, f"{name}: member {m.filename!r} has a path that climbs out of the archive")
        if m.file_size > MAX_ZIP_RATIO * max(1, m.compress_size) and m.file_size > 1024**2:
            raise InputError(413, f"{name}: member {m.filename!r} expands {m.file_size // max(1, m.compress_size)}x "
                             f"(over {MAX_ZIP_RATIO}x): refused as a zip bomb")  # fmt: skip
    for i, m in enumerate(members):
        out = target / f"{i:05d}.dcm"
        with zf.open(m) as src, open(out, "wb") as dst:
            copied = 0
            while chunk := src.read(1024**2):  # the declared size is checked again while reading
                copied += len(chunk)
                if copied > m.file_size:
                    raise InputError(413, f"{name}: member {m.filename!r} is larger than it declares")
                dst.write(chunk)
    return target


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
            if sniff(data) == "zip":
                return self.predict_series(data, name, cam)
            return self.predict(decode_upload(data, name), cam, upload_acquisition(data))

    def predict_series(self, data: bytes, name: str, cam: bool = False) -> dict[str, Any]:
        """A ZIP of a DICOM series or study: scored as `covidct predict` scores a folder. Each series' top slices
        come back as pictures in the lung window (with their Grad-CAM heat maps under ?cam=true)."""
        import tempfile

        from covidct.inference.predict import predict_inputs

        with tempfile.TemporaryDirectory(prefix="covidct-upload-") as tmp:
            folder = unpack_series_zip(data, name, Path(tmp))
            report: dict[str, Any] = {}
            try:
                predict_inputs(self.model, [folder], report=report)
            except DataError as e:
                raise InputError(422, f"{name}: {str(e).replace(str(folder), 'the archive')}") from None
            for study in report["studies"]:
                study.pop("folder", None)
                for series in study["series"]:
                    self._top_slice_pictures(series.get("top_slices", []), cam)
        keep = ("studies", "skipped", "aggregation", "study_rule", "threshold", "ood_check")
        out = {k: report[k] for k in keep}
        out["skipped"] = [x.replace(str(folder), "the archive") for x in out["skipped"]]
        return {**out, "model": self.model.model_id, "disclaimer": DISCLAIMER}

    def _top_slice_pictures(self, tops: list[dict[str, Any]], cam: bool) -> None:
        """Replace each top slice's file path (a temporary file) by its picture as a PNG data URL."""
        from covidct.inference.explain import explain, overlay
        from covidct.inference.predict import dicom_top_slices

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

    def predict(self, image: Image.Image, cam: bool, acquisition: Any = None) -> dict[str, Any]:
        """Score (and explain) one decoded image; callers hold a slot. `acquisition`: the upload's
        (covidct.ood.acquisition), checked against what the model was trained on."""
        from covidct.inference.explain import explain, overlay
        from covidct.inference.predict import ood_verdict

        scores, ood = self.model.scores_with_ood([image])
        score = float(scores[0])
        flags = self.model.ood_flags(ood)
        unseen = None if acquisition is None else self.model.unseen_acquisition(acquisition)
        inside, reason = (None, None) if flags is None else ood_verdict(bool(flags[0]), unseen)
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
            "in_distribution": inside,
            "ood_reason": reason,
            "ood_score": None if ood is None else round(float(ood[0]), 4),
            "ood_threshold": None if self.model.ood is None else float(self.model.ood.threshold),
            "disclaimer": DISCLAIMER,
        }


def install_error_handlers(app: FastAPI) -> None:
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
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def upload_schema(series_limit: int, max_upload_mb: float) -> dict[str, Any]:
    """The predict route's request body in the OpenAPI document (FastAPI cannot say the byte limits itself)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {"file": {
            "type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
            "minLength": 1, "maxLength": series_limit,
            "description": f"a PNG, JPEG or DICOM file, or a ZIP of a DICOM series or study; 1 byte to "
                           f"{max_upload_mb:g} MB"}}}}}}}  # fmt: skip


async def read_upload(request: Request, file: UploadFile, limit: int, series_limit: int, max_upload_mb: float) -> bytes:
    """The uploaded bytes, or InputError: a parameter or form field the API does not know (refused, not dropped:
    '?cams=true' would silently return no heat map), an upload over the limits, an empty file."""
    unknown = sorted(set(request.query_params) - {"cam"})
    if unknown:
        raise InputError(422, f"unknown query parameter(s) {unknown}; this route takes: cam")
    extra = sorted(set((await request.form()).keys()) - {"file"})
    if extra:
        raise InputError(422, f"unknown form field(s) {extra}; this route takes: file")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > series_limit + 64 * 1024:
        raise InputError(413, f"upload of {int(declared):,} bytes is over the limit of {MAX_SERIES_MB} MB")
    data = await file.read(series_limit + 1)
    if len(data) > series_limit or (len(data) > limit and sniff(data) != "zip"):
        what = f"{MAX_SERIES_MB} MB for a ZIP" if len(data) > series_limit else f"{max_upload_mb:g} MB for an image"
        raise InputError(413, f"{file.filename}: over the upload limit of {what}")
    if not data:
        raise InputError(422, f"{file.filename}: the file is empty")
    return data


def create_app(model: LoadedModel, api_key: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB) -> FastAPI:
    """The FastAPI app around `model`."""

    predictor = Predictor(model)
    limit = int(max_upload_mb * 1024 * 1024)
    series_limit = max(limit, MAX_SERIES_MB * 1024 * 1024)
    app = FastAPI(
        title="covidct",
        description=f"COVID-19 classification of chest CT images. {DISCLAIMER}",
        version=str(model.card.get("covidct_version") or __version__),  # FastAPI needs one for OpenAPI
    )
    install_error_handlers(app)

    def check_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key and not (x_api_key and secrets.compare_digest(x_api_key, api_key)):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.model_id}

    @app.get("/api/v1/model", dependencies=[Depends(check_key)], responses=_errors(401))
    def model_card() -> dict[str, Any]:
        runtime = "onnxruntime" if model.session is not None else "pytorch"
        serving = {"max_upload_mb": max_upload_mb, "max_pixels": MAX_PIXELS, "workers": predictor.workers,
                   "runtime": runtime}  # fmt: skip
        return {**model.card, "serving": serving}

    @app.post(
        "/api/v1/predict",
        dependencies=[Depends(check_key)],
        response_model=Prediction | SeriesPrediction,
        responses=_errors(401, 413, 415, 422),
        openapi_extra=upload_schema(series_limit, max_upload_mb),
    )
    async def predict(request: Request, file: Annotated[UploadFile, File()], cam: bool = False) -> dict[str, Any]:
        data = await read_upload(request, file, limit, series_limit, max_upload_mb)
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

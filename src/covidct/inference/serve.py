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
import secrets
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from covidct import DISCLAIMER, __version__
from covidct.config import INPUT_LIMITS, InputLimits
from covidct.data.inputs import DICOM, IMAGE, ZIP, kind_of_bytes, read_bytes
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import DataError
from covidct.inference.batching import Batcher, FairSlots
from covidct.inference.load import LoadedModel

MULTIPART_OVERHEAD = 64 * 1024  # a request's body besides the file: boundaries and part headers
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
    cam_explains: str | None = Field(None, description="what the heat map explains (with ?cam=true)")
    preview: str | None = Field(
        None, description="a DICOM upload as it was read (lung window), as a PNG data URL; null for PNG and JPEG"
    )
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
    shift: dict[str, Any] | None = Field(
        None, description="the batch shift test of the archive's slices against the model's validation images"
    )
    model: str
    disclaimer: str


class Health(BaseModel):
    status: str
    model: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or wrong API key (header X-API-Key)",
        413: "upload over the size limit",
        415: "not a PNG, JPEG or DICOM file (judged by its bytes)",
        422: "empty, truncated or undecodable file, too many pixels, no pixel data, or a bad field",
        503: "the uploads in flight hold the server's limit of bytes (inflight_mb): retry after Retry-After seconds",
    }
    return {code: {"model": ErrorDetail, "description": text[code]} for code in codes}


class InputError(Exception):
    """Bad input: an HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def upload_acquisition(data: bytes) -> Any:
    """How an upload was acquired (covidct.ood.acquisition): a DICOM file's header; an image file's shape. A header
    that cannot be read gives the kind alone (decode_upload says what is wrong with the file)."""
    from covidct.data.medical import open_dicom
    from covidct.ood import acquisition

    if kind_of_bytes(data) != DICOM:
        return acquisition.image_acquisition(io.BytesIO(data))
    try:
        return acquisition.from_dicom_header(open_dicom(data, "upload", header_only=True))
    except DataError:  # decode_upload answers 422 for the same bytes
        return acquisition.Acquisition(acquisition.DICOM)


def decode_upload(data: bytes, name: str, window: tuple[float, float] = LUNG_WINDOW) -> Image.Image:
    """An uploaded file as an RGB image (data/inputs.py reads it), within the active input limits, or InputError
    with the status to answer."""
    if kind_of_bytes(data) not in (IMAGE, DICOM):
        raise InputError(
            415, f"{name}: unsupported file type; send a PNG, JPEG or DICOM (.dcm) file, or a ZIP of a series"
        )
    try:
        return read_bytes(data, name, window)
    except DataError as e:
        raise InputError(422, str(e)) from None


TOP_SLICES_SHOWN = 5  # pictures per series in the answer to a ZIP (each about 30-60 kB as a data URL)


def as_members(data: bytes, folder: Path) -> Any:
    """A function that says a message about the extracted files (folder/00000.dcm, ...) in the archive's own member
    names ("member 'series/IM1'"), and the folder as "the archive": what the client sent, not where it was put."""
    import re
    import zipfile

    names = [m.filename for m in zipfile.ZipFile(io.BytesIO(data)).infolist() if not m.is_dir()]
    pattern = re.compile(re.escape(str(folder)) + r"/(\d{5})\.dcm")

    def said(text: str) -> str:
        def member(match: re.Match) -> str:
            i = int(match.group(1))
            return f"member {names[i]!r}" if i < len(names) else match.group(0)

        return pattern.sub(member, text).replace(str(folder), "the archive")

    return said


def unpack_series_zip(data: bytes, name: str, target: Path, limits: InputLimits) -> Path:
    """Extract a ZIP of DICOM files after checking its members against `limits`: count, each member's and the total
    expanded size, compression ratio, and paths that would climb out of the target. InputError (413/422) names what
    is wrong, before anything is extracted; sizes are counted again while extracting (a member may lie about its
    size), and a refusal midway leaves the caller's temporary folder to be removed with the request."""
    import zipfile

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in zf.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as e:
        raise InputError(422, f"{name}: not a readable ZIP file ({e})") from None
    _check_members(members, name, limits)
    budget = limits.megabytes("expanded_mb")
    for i, m in enumerate(members):
        try:
            budget = _extract(zf, m, target / f"{i:05d}.dcm", budget, name, limits)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
            raise InputError(
                422, f"{name}: member {m.filename!r} cannot be expanded ({type(e).__name__}: {e})"
            ) from None
    return target


def _extract(zf: Any, member: Any, out: Path, budget: int, name: str, limits: InputLimits) -> int:
    """Copy one member out a MB at a time, its size counted against what it declares and what is left of the
    total; returns what is left."""
    with zf.open(member) as src, open(out, "wb") as dst:
        copied = 0
        while chunk := src.read(1024**2):
            copied += len(chunk)
            budget -= len(chunk)
            if copied > member.file_size:
                raise InputError(413, f"{name}: member {member.filename!r} is larger than it declares")
            if budget < 0:
                raise InputError(413, f"{name}: expands past the limit of {limits.expanded_mb:g} MB (expanded_mb)")
            dst.write(chunk)
    return budget


def _check_members(members: list[Any], name: str, limits: InputLimits) -> None:
    """The ZIP's directory checked against the limits, before a byte is expanded."""
    from pathlib import PurePosixPath

    if len(members) > limits.archive_members:
        raise InputError(
            413, f"{name}: {len(members)} files is over the limit of {limits.archive_members} (archive_members)"
        )
    total = sum(m.file_size for m in members)
    if total > limits.megabytes("expanded_mb"):
        raise InputError(
            413, f"{name}: {total:,} bytes expanded is over the limit of {limits.expanded_mb:g} MB (expanded_mb)"
        )
    for m in members:
        parts = PurePosixPath(m.filename.replace("\\", "/")).parts
        if PurePosixPath(m.filename).is_absolute() or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(422, f"{name}: member {m.filename!r} has a path that climbs out of the archive")
        if m.file_size > limits.megabytes("member_mb"):
            raise InputError(
                413,
                f"{name}: member {m.filename!r} expands to {m.file_size:,} bytes, over the limit "
                f"of {limits.member_mb:g} MB (member_mb)",
            )
        if m.file_size > limits.member_ratio * max(1, m.compress_size):
            raise InputError(
                413,
                f"{name}: member {m.filename!r} expands {m.file_size // max(1, m.compress_size)}x, "
                f"over the limit of {limits.member_ratio:g}x (member_ratio): refused as a zip bomb",
            )


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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

    def predict(self, image: Image.Image, cam: bool, acquisition: Any = None, client: str = "") -> dict[str, Any]:
        """Score (and explain) one decoded image; callers hold a slot. `acquisition`: the upload's
        (covidct.ood.acquisition), checked against what the model was trained on."""
        from covidct.inference.explain import explain, overlay

        if self.batcher is not None:
            scores, ood, outputs = self.batcher.score(image)
        else:
            with self.model.collecting() as outputs:
                scores, ood = self.model.scores_with_ood([image])
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


def upload_schema(limits: InputLimits) -> dict[str, Any]:
    """The predict route's request body in the OpenAPI document (FastAPI cannot say the byte limits itself)."""
    series_limit, max_upload_mb = limits.megabytes("archive_mb"), limits.upload_mb
    what = f"a PNG, JPEG or DICOM file, or a ZIP of a DICOM series or study; 1 byte to {max_upload_mb:g} MB"
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "contentMediaType": "application/octet-stream",
                                "minLength": 1,
                                "maxLength": series_limit,
                                "description": what,
                            }
                        },
                    }
                }
            },
        }
    }


async def read_upload(request: Request, file: UploadFile, limits: InputLimits) -> bytes:
    """The uploaded bytes, or InputError: a parameter or form field the API does not know (refused, not dropped:
    '?cams=true' would silently return no heat map), a second file, an upload over the limits, an empty file.
    The body as a whole is bounded before this runs (the route's max_body_size); an image's own, smaller limit is
    checked on its first bytes and its size, before it is read."""
    unknown = sorted(set(request.query_params) - {"cam"})
    if unknown:
        raise InputError(422, f"unknown query parameter(s) {unknown}; this route takes: cam")
    form = await request.form()
    extra = sorted(set(form.keys()) - {"file"})
    if extra:
        raise InputError(422, f"unknown form field(s) {extra}; this route takes: file")
    if len(form.getlist("file")) > 1:
        raise InputError(
            422,
            f"{len(form.getlist('file'))} files in one request; send one image, DICOM or ZIP per "
            "request (a ZIP holds a series or study)",
        )
    name = file.filename or "upload"
    head = await file.read(8)
    await file.seek(0)
    is_zip = kind_of_bytes(head) == ZIP
    limit = limits.megabytes("archive_mb" if is_zip else "upload_mb")
    if file.size is not None and file.size > limit:
        raise InputError(413, f"{name}: {file.size:,} bytes is over the upload limit of {over(limits, is_zip)}")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise InputError(413, f"{name}: over the upload limit of {over(limits, is_zip)}")
    if not data:
        raise InputError(422, f"{name}: the file is empty")
    return data


def over(limits: InputLimits, is_zip: bool) -> str:
    return (
        f"{limits.archive_mb:g} MB for a ZIP (archive_mb)"
        if is_zip
        else f"{limits.upload_mb:g} MB for an image (upload_mb)"
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
        response_model=Prediction | SeriesPrediction,
        responses=_errors(401, 413, 415, 422, 503),
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


def add_reading_routes(app: FastAPI, predictor: Predictor, check_key: Any) -> None:
    """The routes that read the server's state: liveness, the model card with the limits, the caller's recent
    traffic's shift test (all but liveness behind the API key: `check_key` names the caller)."""
    model, limits = predictor.model, predictor.limits
    auth = [Depends(check_key)]

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.model_id}

    @app.get("/api/v1/model", dependencies=auth, responses=_errors(401))
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

    @app.get("/api/v1/shift", responses=_errors(401))
    async def shift(client: Annotated[str, Depends(check_key)]) -> dict[str, Any]:
        """The batch shift test of the last images this caller sent (its API key's window; every caller's when the
        server has no keys) against the model's validation images."""
        record = await asyncio.to_thread(predictor.window(client).test, model)
        return {**record, "client": client or None}


def body_limit_text(limits: InputLimits, declared: str | None) -> str:
    size = f" of {int(declared):,} bytes" if declared and declared.isdigit() else ""
    return (
        f"upload{size} is over the limit of {limits.archive_mb:g} MB for a ZIP (archive_mb) and "
        f"{limits.upload_mb:g} MB for an image (upload_mb)"
    )


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


RETRY_AFTER_S = 2  # what a client refused for load waits before it tries again
HELD_COPIES = 2  # copies of an upload's bytes a request holds while it is read and parsed


class InflightBudget:
    """The bytes that uploads in flight hold, all requests together, bounded (InputLimits.inflight_mb): a request
    that would pass the bound is refused at once (503 with Retry-After) rather than queued in memory. Taken and given
    back on the event loop's thread only, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


def add_pages(app: FastAPI) -> None:
    """The web page (/) and the API's description (/docs), both with nothing loaded from elsewhere."""

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        """Where the API is described, offline: the OpenAPI document and its routes (no scripts from a CDN)."""
        return docs_page(app)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8").replace("{{DISCLAIMER}}", DISCLAIMER)


@dataclass(frozen=True)
class ServeSettings:
    """What `covidct serve` is asked besides the model and the address (create_app's arguments)."""

    api_key: list[str] | None = None
    limits: InputLimits = INPUT_LIMITS
    shift_window: int = 200
    batch_wait_ms: float = 0.0


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None) -> None:
    """Load the model once and serve it with uvicorn (one process; parallelism inside, see Predictor)."""
    import torch
    import uvicorn

    from covidct.inference.load import load_trained as load_model

    # Requests scored alone run one per core with one thread each; batches run one at a time on every core.
    s = settings or ServeSettings()
    threads = max(1, os.cpu_count() or 1) if s.batch_wait_ms > 0 else 1
    model = load_model(model_path, threads=threads)
    torch.set_num_threads(threads)
    keys = s.api_key or [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    app = create_app(model, keys, s.limits, s.shift_window, s.batch_wait_ms)
    uvicorn.run(app, host=host, port=port, log_level="info")


def openapi_document(limits: InputLimits = INPUT_LIMITS) -> dict[str, Any]:
    """The REST API's OpenAPI document, without a model (the docs' reference is generated from it): the app is built
    around a card alone, which routes never reach while nothing is served."""
    from covidct.data.preprocessing import Preprocessing
    from covidct.model_card import ModelCard

    card = ModelCard("any", Preprocessing(), ["NonCOVID", "COVID"], threshold=0.5)
    return create_app(LoadedModel(card=card), limits=limits).openapi()

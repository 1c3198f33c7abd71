"""The REST API's answers as Pydantic models (what `covidct serve` returns and its OpenAPI document describes) and
the error answers each route may give."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """Every error covidct's API answers: one sentence naming the file or field and what is wrong."""

    detail: str = Field(description="what is wrong, naming the file or field")


class ImagePrediction(BaseModel):
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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or wrong API key (header X-API-Key)",
        413: "upload over the size limit",
        415: "not a PNG, JPEG or DICOM file (judged by its bytes)",
        422: "empty, truncated or undecodable file, too many pixels, no pixel data, or a bad field",
        503: "the uploads in flight hold the server's limit of bytes (inflight_mb): retry after Retry-After seconds",
    }
    return {code: {"model": ErrorDetail, "description": text[code]} for code in codes}

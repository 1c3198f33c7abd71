"""covidct export, predict and serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from covidct import DISCLAIMER
from covidct.cli.common import (
    READER_LIMITS,
    UPLOAD_LIMITS,
    limit_args,
    limits_from_args,
    window,
)
from covidct.data.medical import LUNG_WINDOW
from covidct.verdict import AGGREGATIONS, DEFAULT_AGGREGATION, IMAGE_UNLIKE, ood_mark


def cmd_export(args: argparse.Namespace) -> int:
    from covidct import api

    for path in api.export(args.run_dir, args.format, args.out, args.data_dir):
        print(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.data.inputs import list_inputs
    from covidct.fileio import write_json
    from covidct.inference.predict import checked_outputs

    print(DISCLAIMER, file=sys.stderr)
    with limits_from_args(args).applied():  # listing the inputs too: a folder is listed within folder_entries
        paths = list_inputs(args.inputs)
        csv_path, json_path = checked_outputs(args.out, paths)
        model = api.load(args.model)
        predictions = model.predict(paths, args.threshold, args.window, args.aggregate, cam=args.cam)
    predictions.to_csv(csv_path)
    write_json(json_path, {**predictions.report, "model": model.loaded.model_id, "disclaimer": DISCLAIMER})
    print_predictions(predictions, args, json_path, model.loaded.heat_map_explains)
    print(DISCLAIMER, file=sys.stderr)
    return 0


def print_predictions(predictions: Any, args: argparse.Namespace, json_path: Path, explains: str) -> None:
    """What `covidct predict` prints of `predictions` (an api.Predictions): a line per image file, volume and study,
    what was skipped, the out-of-distribution and shift lines, and where the outputs went."""
    rows, report = predictions.rows, predictions.report
    for r in rows:
        if r["slice"] in ("", "volume", "study"):
            where = r["path"] + (f" [{r['series']}]" if r["series"] else "") + (f" {r['slice']}" if r["slice"] else "")
            mark = ood_mark(r.get("in_distribution"))
            print(f"{one_line(where)}: score {r['score']:.3f} -> {r['label']} (threshold {r['threshold']:.3f}){mark}")
    for note in report.get("skipped", []):
        print(f"skipped: {one_line(note)}")
    print(ood_message(rows, report.get("ood_check", "unavailable"), args.model))
    print(shift_message(report["shift"]))
    if any(r["slice"] in ("volume", "study") for r in rows):
        print(f"volume score: {AGGREGATIONS[args.aggregate][1]}, over the slices in lung")
    print(f"wrote {args.out} and {json_path}" + (f"; Grad-CAM overlays in {args.cam}" if args.cam else ""))
    if args.cam:
        print(f"the heat maps explain {explains}")


def one_line(text: str) -> str:
    """`text` (a file name, a message naming one) on one console line: a newline, tab or other control character
    in a name is shown escaped (as Python writes it) instead of splitting the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def ood_message(rows: list[dict], rule: str, model: str) -> str:
    """One line on the out-of-distribution check: unavailable (and how to add it), or how much it flagged."""
    if rule == "unavailable":
        return (
            f"out-of-distribution check unavailable: this model has no detector (trained before covidct had "
            f"them); add one with: covidct ood fit RUN (then export again if {model} is an export)"
        )
    slices = [r for r in rows if r["slice"] not in ("volume", "study") and r["in_distribution"] is not None]
    flagged = [r for r in slices if r["in_distribution"] is False]
    volumes = [r for r in rows if r["slice"] in ("volume", "study") and r["in_distribution"] is False]
    if not flagged and not volumes:
        return f"out-of-distribution check: none of {len(slices)} images/slices flagged"
    acquisitions = sorted({r["ood_reason"] for r in flagged if r.get("ood_reason") not in ("", IMAGE_UNLIKE, None)})
    why = "".join(f"; not seen in training: {a}" for a in acquisitions[:3])
    return (
        f"WARNING: {len(flagged)} of {len(slices)} images/slices (and {len(volumes)} volumes/studies) do not look "
        "like the images this model was trained on: their scores mean little there (volumes: " + rule + ")" + why
    )


def shift_message(record: dict) -> str:
    """One line on the batch shift test of everything this run scored (covidct.ood.shift)."""
    from covidct.ood.shift import shift_text

    if not record.get("tested"):
        return f"shift test not run: {record['why']}"
    return shift_text(record, "this batch")


def cmd_serve(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.config import ServeSettings

    print(DISCLAIMER, file=sys.stderr)
    settings = ServeSettings(args.api_key, limits_from_args(args), args.shift_window, args.batch_wait_ms)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.keys():
        print(
            f"warning: serving on {args.host} without an API key; anyone who can reach it can use it", file=sys.stderr
        )
    api.serve(args.model, args.host, args.port, settings)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the best model as safetensors + JSON card and verified ONNX")
    p.add_argument("run_dir", type=Path, help="a run folder (runs/<timestamp>-<model>)")
    p.add_argument(
        "--format",
        default="both",
        choices=["both", "safetensors", "onnx"],
        help="both: model.safetensors (PyTorch: Grad-CAM, adaptation) and model.onnx checked against PyTorch "
        "(ONNX Runtime scores, 2x faster); or one of them; with model.json (default %(default)s)",
    )
    p.add_argument("--out", help="output folder (default RUN_DIR/export)")
    p.add_argument("--data-dir", help="data for the ONNX check (default: the run's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="score images, DICOM, DICOM series and NIfTI volumes (research use only)")
    p.add_argument("model", help="export folder (model.safetensors/.onnx + model.json), model file or run folder")
    p.add_argument("inputs", nargs="+", help="files, folders (recursive; a folder of DICOM files is a series), globs")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--cam", metavar="DIR", help="also save Grad-CAM overlays (PNG) here")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument(
        "--window", type=window, default=LUNG_WINDOW, help="CT window CENTRE/WIDTH in HU (default -600/1500)"
    )
    p.add_argument(
        "--aggregate",
        default=DEFAULT_AGGREGATION,
        choices=tuple(AGGREGATIONS),
        help="volume score from the slices in lung (default top10_mean: mean of the top 10%%)",
    )
    limit_args(p, READER_LIMITS)
    p.set_defaults(func=cmd_predict)
    register_serve(sub)


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app and REST API for one model (research use only)")
    p.add_argument("model", help="export folder (model.safetensors [+ model.onnx] + model.json) or run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    p.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="require this key in header X-API-Key on /api/; several: one per client (site), each with its own shift "
        "window (default: $COVIDCT_API_KEY, keys separated by commas)",
    )
    p.add_argument(
        "--shift-window",
        type=int,
        default=200,
        metavar="N",
        help="the batch shift test (GET /api/v1/shift, the page's banner) covers the last N images scored "
        "(default %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="gather concurrent requests' images for up to MS milliseconds and score them as one batch on every "
        "core (0: each request alone, one per core; SPEED.md compares them) (default %(default)s)",
    )
    limit_args(p, UPLOAD_LIMITS + READER_LIMITS)
    p.set_defaults(func=cmd_serve)

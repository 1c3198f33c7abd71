"""Before and after, side by side in one run on one machine: `covidct predict RUN FOLDER` (wall time, images per
second, peak memory) alternating the two commits' code A B A B, `covidct serve RUN` under load_test.py at
concurrency 1, 8 and 32, and the scores each gives on the same images (predict's JSON and the served answers) and
what `covidct evaluate` gives. The earlier commit runs from a git worktree of this repository (its src/ first on
PYTHONPATH), in the same virtual environment.

Usage:
    .venv/bin/python benchmarks/speed_compare.py BASE_COMMIT RUN_DIR IMAGES_DIR [--pairs 3] [--requests 300]
        [--scores-dir DIR] [--serve-args "--batch-wait-ms 5"]
IMAGES_DIR: the images predict scores (e.g. 2,000 PNG slices); --scores-dir: images whose scores are compared
(e.g. the COVID-CT test split, as links in a folder). Prints Markdown (benchmarks/SPEED.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worktree(commit: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"covidct-{commit[:12]}"
    if not path.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


def environment(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def predict(src: Path, run: Path, images: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak MB) of covidct predict, from /usr/bin/time."""
    command = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "covidct", "predict", str(run), str(images)]
    done = subprocess.run([*command, "--out", str(out)], env=environment(src), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"predict failed with {src}: {done.stderr[-2000:]}")
    wall, kb = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) / 1024


def json_scores(path: Path) -> dict[str, float]:
    return {Path(i["path"]).name: float(i["score"]) for i in json.loads(path.read_text())["images"]}


def load_test(src: Path, run: Path, requests: int, serve_args: str) -> str:
    command = [sys.executable, str(ROOT / "benchmarks" / "load_test.py"), str(run), "--requests", str(requests)]
    done = subprocess.run([*command, "--serve-args", serve_args], env=environment(src), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"load test failed with {src}: {done.stderr[-2000:]}")
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))


def served_scores(src: Path, run: Path, images: list[Path], serve_args: str) -> dict[str, float]:
    """Each image posted once to a server of this code: its score."""
    from load_test import served  # beside this file

    out = {}
    with served(str(run), serve_args, environment(src)) as (url, _):
        for path in images:
            r = httpx.post(url + "/api/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
            out[path.name] = float(r.json()["score"])
    return out


def evaluate_scores(src: Path, run: Path, tmp: Path) -> np.ndarray:
    """The test split's scores as `covidct evaluate RUN --split test` writes them, in a copy of the run."""
    import shutil

    copy = tmp / f"run-{src.parent.name}"
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns("eval-*", "tensorboard"))
    command = [sys.executable, "-m", "covidct", "evaluate", str(copy), "--split", "test"]
    done = subprocess.run(command, env=environment(src), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evaluate failed with {src}: {done.stderr[-2000:]}")
    rows = (copy / "eval-test" / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    return np.array([float(r.split(",")[header.index("score")]) for r in rows[1:]])


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys(), "the two scored different images"
    return max(abs(a[k] - b[k]) for k in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("run", type=Path)
    p.add_argument("images", type=Path)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--scores-dir", type=Path)
    p.add_argument("--serve-args", default="", help="more arguments of this commit's covidct serve (a second row)")
    args = p.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    codes = {"before": (worktree(args.base) / "src", args.base[:7]), "after": (ROOT / "src", commit.stdout.strip())}
    tmp = Path(tempfile.mkdtemp())
    compare_predict(codes, args.run, args.images, args.pairs, tmp)
    if args.scores_dir:
        compare_scores(codes, args.run, args.scores_dir, tmp)
    for key, (src, label) in codes.items():
        print(f"\ncovidct serve RUN, {key} ({label}), {args.requests} requests per concurrency\n")
        print(load_test(src, args.run, args.requests, ""))
    if args.serve_args:
        print(f"\ncovidct serve RUN {args.serve_args}, after\n")
        print(load_test(codes["after"][0], args.run, args.requests, args.serve_args))
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs: {cpu_name()}")


def compare_predict(codes: dict, run: Path, images: Path, pairs: int, tmp: Path) -> None:
    n = sum(1 for f in images.rglob("*") if f.is_file())
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in codes}
    for _ in range(pairs):
        for key, (src, _) in codes.items():
            times[key].append(predict(src, run, images, tmp / f"{key}.csv"))
    print(f"covidct predict RUN FOLDER, {n} images, {pairs} runs each, alternating\n")
    print("| code | commit | wall s (median; min-max) | images/s | peak MB |")
    print("|---|---|---|---|---|")
    for key, (_, label) in codes.items():
        walls = [w for w, _ in times[key]]
        spread = f"{np.median(walls):.1f}; {min(walls):.1f}-{max(walls):.1f}"
        peak = max(m for _, m in times[key])
        print(f"| {key} | {label} | {spread} | {n / float(np.median(walls)):.1f} | {peak:.0f} |")
    difference = largest_difference(*(json_scores(tmp / f"{k}.json") for k in codes))
    print(f"\npredict's scores, largest difference: {difference:.2e}")


def compare_scores(codes: dict, run: Path, folder: Path, tmp: Path) -> None:
    files = sorted(f for f in folder.iterdir() if f.is_file())
    for key, (src, _) in codes.items():
        predict(src, run, folder, tmp / f"{key}-scores.csv")
    predicted = largest_difference(*(json_scores(tmp / f"{k}-scores.json") for k in codes))
    served = largest_difference(*(served_scores(src, run, files, "") for src, _ in codes.values()))
    before, after = (evaluate_scores(src, run, tmp) for src, _ in codes.values())
    evaluated = np.abs(before - after).max()
    print(f"\nscores of {folder} ({len(files)} images), largest difference before/after: predict {predicted:.2e}")
    print(f"serve {served:.2e}; covidct evaluate --split test {evaluated:.2e}")


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else "unknown CPU"


if __name__ == "__main__":
    main()

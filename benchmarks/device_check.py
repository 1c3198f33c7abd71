"""The steps of benchmarks/device_check.sh (issue 15), each through the covidct command line, with a wall-time
budget: a step that would not fit is recorded as skipped, never cut silently.

  (a) the study's vgg19_bn for 60 epochs on COVID-CT, bf16-mixed, from random weights (--no-pretrained: ImageNet
      weights cannot be fetched there either); seconds per epoch and images/s; then the default backbone likewise
  (b) the default recipe, 3 seeds, evaluated once on the test split
  (c) covidct pretrain (SimCLR, the full schedule) and the default recipe fine-tuned from it
  (d) a 1-GPU DDP run through the CLI (torchrun, 1 process)
Results: OUT/results.json and OUT/results.md; every run folder under OUT/runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(5, timeout)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - start


def newest(folder: Path) -> Path | None:
    runs = sorted((p for p in folder.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--budget", type=float, default=460.0, help="seconds for all steps (default 460: 8 min - setup)")
    ap.add_argument("--steps", default="a,b,c,d", help="steps to run, by name prefix (default all: a,b,c,d)")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    log = out / "steps.log"
    py = [sys.executable, "-m", "covidct"]
    dry = args.dry_run
    acc = (
        ["--accelerator", "cpu", "--precision", "32"] if dry else ["--accelerator", "gpu", "--precision", "bf16-mixed"]
    )
    tiny = ["--model", "timm:resnet10t", "--no-pretrained", "--input-size", "32", "--batch-size", "8"] if dry else []
    workers = ["--num-workers", "0" if dry else str(min(8, os.cpu_count() or 1))]
    common = ["--data-dir", args.data, "--no-tensorboard", *acc, *workers]
    deadline = time.perf_counter() + args.budget
    results: dict = {"dry_run": dry, "steps": {}}

    def left() -> float:
        return deadline - time.perf_counter()

    def step(name: str, cmd: list[str], need: float, folder: Path) -> dict:
        if not any(name.startswith(x) for x in args.steps.split(",")):
            return {}
        if left() < need:
            results["steps"][name] = {"status": f"skipped: {left():.0f} s left, needs about {need:.0f} s"}
            return results["steps"][name]
        folder.mkdir(parents=True, exist_ok=True)
        rc, wall = run([*cmd, "--out", str(folder)], log, left())
        entry: dict = {"status": "ok" if rc == 0 else f"failed (exit {rc})", "wall_s": round(wall, 1)}
        run_dir = newest(folder)
        if run_dir and (run_dir / "summary.json").is_file():
            s = json.loads((run_dir / "summary.json").read_text())
            entry.update(
                {
                    k: s.get(k)
                    for k in (
                        "epochs_run",
                        "seconds_per_epoch",
                        "wall_time_s",
                        "precision",
                        "best_epoch",
                        "final_loss",
                        "images",
                    )
                }
            )
            n_train = sum((s.get("counts") or {}).get("train", {}).values()) if s.get("counts") else None
            if n_train and s.get("wall_time_s"):
                entry["train_images_per_s"] = round(n_train * s["epochs_run"] / s["wall_time_s"], 1)
            m = run_dir / "eval-test" / "metrics.json"
            if m.is_file():
                mm = json.loads(m.read_text())
                entry["test"] = {k: mm[k] for k in ("accuracy", "sensitivity", "specificity", "auc", "n")}
            entry["run"] = str(run_dir)
        results["steps"][name] = entry
        print(name, entry, flush=True)
        return entry

    e60 = "2" if dry else "60"
    no_stop = ["--patience", "1000"]
    # (a) speed: the study's VGG-19-bn and the default backbone, 60 epochs each, no early stopping
    vgg = ["--model", "vgg19_bn", "--batch-size", "32", "--checkpoint-every", "20"] if not dry else tiny
    step(
        "a_vgg19_bn_60_epochs",
        [
            *py,
            "train",
            *common,
            *vgg,
            "--no-pretrained",
            "--epochs",
            e60,
            *no_stop,
            "--augment",
            "study",
            "--no-grayscale",
            "--label-smoothing",
            "0",
        ],
        100,
        out / "runs" / "a-vgg19_bn",
    )
    one = ["--no-fold-probe"]  # the backbone's own speed: one training, not the default recipe's teacher before it
    step(
        "a_default_60_epochs",
        [*py, "train", *common, *tiny, *one, "--epochs", e60, *no_stop],
        60,
        out / "runs" / "a-default",
    )
    # (b) the default recipe, 3 seeds, test figures
    epochs = ["--epochs", "2"] if dry else []
    for seed in (1, 2, 3):
        step(
            f"b_default_seed{seed}",
            [*py, "train", *common, *tiny, *epochs, "--seed", str(seed), "--evaluate", "test"],
            45,
            out / "runs" / f"b-seed{seed}",
        )
    # (c) self-supervised pretraining (train + val images, never test), then the default recipe from it
    pre = step(
        "c_pretrain_simclr",
        [
            *py,
            "pretrain",
            "--data-dir",
            args.data,
            *acc,
            *workers,
            *tiny,
            "--include-val",
            "--epochs",
            "2" if dry else "100",
            "--batch-size",
            "8" if dry else "128",
            "--input-size",
            "32" if dry else "224",
        ],
        90,
        out / "runs" / "c-pretrain",
    )
    if pre.get("run"):
        step(
            "c_fine_tuned_from_pretrain",
            [*py, "train", *common, *tiny, *epochs, "--init", pre["run"], "--evaluate", "test"],
            40,
            out / "runs" / "c-finetune",
        )
    # (d) one-GPU DDP through the CLI under torchrun (WORLD_SIZE=1: Lightning's DDP strategy with one process)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-port",
        "29531",
        "-m",
        "covidct",
    ]
    step(
        "d_ddp_one_gpu",
        [*torchrun, "train", *common, *tiny, "--epochs", "2", "--run-dir", str(out / "runs" / "d-ddp" / "run")],
        40,
        out / "runs" / "d-ddp",
    )
    results["budget_s"], results["used_s"] = args.budget, round(args.budget - left(), 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| step | status | wall s | epochs | s/epoch | train img/s | test acc | test AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["steps"].items():
        t = e.get("test", {})
        acc_auc = [f"{t['accuracy']:.3f}", f"{t['auc']:.3f}"] if t else ["", ""]
        cells = [
            name,
            e["status"],
            e.get("wall_s", ""),
            e.get("epochs_run", ""),
            e.get("seconds_per_epoch", ""),
            e.get("train_images_per_s", ""),
            *acc_auc,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [n for n, e in results["steps"].items() if e["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Plant, one at a time, the statistics faults of issues 16 and 28 in a copy of src/ and run the quick tests of
tests/evaluation against each: a fault that no test catches is printed as MISSED and the script exits 1.

  .venv/bin/python tools/planted_faults.py        # part of `make mutation`; a table for MUTATION.md
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = "src/covidct/evaluation"

NON_STRATIFIED = """
def _bootstrap(pos, neg, threshold, n, confidence, seed):  # planted: resamples the pooled images
    import types
    rng = np.random.default_rng(seed)
    s, y = np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    rows = []
    for _ in range(n):
        i = rng.integers(0, len(s), len(s))
        p, q = s[i][y[i] == 1], s[i][y[i] == 0]
        if len(p) and len(q):
            rows.append(_metrics_from_split_scores(p, q, threshold))
    a = (1 - confidence) / 2
    ci = types.SimpleNamespace(low=np.nanquantile(rows, a, axis=0), high=np.nanquantile(rows, 1 - a, axis=0))
    return types.SimpleNamespace(confidence_interval=ci)


def _unused_bootstrap("""

# (name, file, old text, new text, occurrence): each replaces one occurrence of old text
FAULTS = [
    ("bootstrap not stratified by class", "statistics.py", "def _bootstrap(", NON_STRATIFIED, 1),
    (
        "PPV and NPV swapped in the bootstrap",
        "statistics.py",
        "[acc, sens, spec, ppv, npv, f1, auc]",
        "[acc, sens, spec, npv, ppv, f1, auc]",
        1,
    ),
    ("DeLong interval with z = 1.645", "statistics.py", "z = stats.norm.ppf(0.5 + confidence / 2)", "z = 1.645", 1),
    (
        "paired DeLong p-value one-sided",
        "statistics.py",
        "p = 2 * stats.norm.sf(abs(diff) / se)",
        "p = stats.norm.sf(abs(diff) / se)",
        1,
    ),
    (
        "paired DeLong interval at 90%",
        "statistics.py",
        "z = stats.norm.ppf(0.5 + confidence / 2)",
        "z = stats.norm.ppf(0.95)",
        2,
    ),
    (
        "Youden takes the lowest of tied thresholds",
        "metrics.py",
        "return float(thresholds[int(np.argmax(j))])",
        "return float(thresholds[len(j) - 1 - int(np.argmax(j[::-1]))])",
        1,
    ),
    (
        "ECE not weighted by bin share",
        "calibration.py",
        "ece += inside.mean() * abs(",
        "ece += (1 / len(np.unique(bins))) * abs(",
        1,
    ),
    ("Clopper-Pearson instead of Wilson", "statistics.py", 'method="wilson"', 'method="exact"', 1),
    # issue 28: three faults no test caught, and more of the numeric core
    (
        "bootstrap intervals at 0.5 whatever the threshold",
        "summary.py",
        "bootstrap_intervals(labels, scores, threshold,",
        "bootstrap_intervals(labels, scores, 0.5,",
        1,
    ),
    (
        "Youden without its guard on non-finite thresholds",
        "metrics.py",
        "j = np.where(finite, tpr - fpr, -np.inf)",
        "j = tpr - fpr",
        1,
    ),
    (
        "ECE bins closed on the right",
        "calibration.py",
        "return np.clip((s * n_bins).astype(int), 0, n_bins - 1)",
        "return np.clip(np.ceil(s * n_bins).astype(int) - 1, 0, n_bins - 1)",
        1,
    ),
    (
        "reliability diagram binned apart from the ECE",
        "calibration.py",
        "bins = score_bins(s, n_bins)",
        "bins = np.clip(np.ceil(s * n_bins).astype(int) - 1, 0, n_bins - 1)",
        2,
    ),
    (
        "scores not cast to float64",
        "metrics.py",
        "s = np.asarray(scores, dtype=float).ravel()",
        "s = np.asarray(scores).ravel()",
        1,
    ),
    (
        "predict compares in the scores' own precision",
        "metrics.py",
        "return positive(np.asarray(scores, dtype=float), threshold)",
        "return positive(np.asarray(scores), threshold)",
        1,
    ),
    (
        "threshold for sensitivity takes the lowest that qualifies",
        "metrics.py",
        "return float(thresholds[ok[0]])",
        "return float(thresholds[ok[-1]])",
        1,
    ),
]


def plant(src: Path, file: str, old: str, new: str, occurrence: int) -> None:
    path = src / EVAL / file
    text = path.read_text()
    parts = text.split(old)
    if len(parts) <= occurrence:
        raise SystemExit(f"planted_faults.py: {file} no longer contains {old!r} {occurrence} time(s); update FAULTS")
    path.write_text(old.join(parts[:occurrence]) + new + old.join(parts[occurrence:]))


def main() -> int:
    rows, missed = [], 0
    for name, file, old, new, occurrence in FAULTS:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(ROOT / "src", Path(tmp) / "src")
            plant(Path(tmp), file, old, new, occurrence)
            env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "not slow",
                "-rf",
                "tests/evaluation",
            ]
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            caught = sorted(set(re.findall(r"^FAILED (\S+?)(?: - |$)", out.stdout, re.M)))
            where = "import covidct.evaluation.statistics as m; print(m.__file__)"
            probe = subprocess.run(
                [sys.executable, "-c", where], env=env, capture_output=True, text=True
            ).stdout.strip()
            assert probe.startswith(tmp), f"the planted copy was not the one imported: {probe}"
        if not caught:
            missed += 1
        tests = ", ".join(f"`{c.split('::')[-1]}`" for c in caught[:4])
        tests += f" (+{len(caught) - 4})" if len(caught) > 4 else ""
        rows.append(f"| {name} | `{file}` | {'caught' if caught else '**MISSED**'} | {tests} |")
        print(rows[-1], flush=True)
    print(f"{len(FAULTS) - missed} of {len(FAULTS)} planted faults caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

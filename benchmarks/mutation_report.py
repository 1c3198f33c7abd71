"""Summarise a `mutmut run` (make mutation): killed, survived, and each survivor either matched to a reviewed
reason why it is equivalent (it cannot change a result covidct reports) or listed as a test gap. Exit 1 when fewer
than 90% of the non-equivalent mutants are killed or a survivor has no reviewed reason.

  .venv/bin/python benchmarks/mutation_report.py     # after mutmut run; prints the Markdown for MUTATION.md
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [str(Path(sys.executable).parent / "mutmut")]

# (function, text of the mutated line) -> why the mutant cannot change a reported number. Reviewed by hand.
EQUIVALENT = {
    ("expected_calibration_error", "astype(int), None, n_bins - 1)"):
        "lower clip of the bin index: scores are probabilities, never below 0",
    ("reliability_curve", "calibration_curve(y, s, n_bins=n_bins, )"):
        'strategy="uniform" is scikit-learn\'s default',
    ("logit", "np.asarray(p, dtype=None)"): "np.clip with float bounds returns floats for integer input too",
    ("logit", "np.asarray(p, )"): "the same as dtype=None",
    ("fit_temperature", "method=None)"): "minimize_scalar picks 'bounded' when bounds are given",
    ("fit_temperature", "math.log(20.0)), )"): "the same as method=None",
    ("fit_temperature", 'method="BOUNDED"'): "scipy lower-cases the method name",
    ("label_score_arrays", "np.asarray(scores, dtype=None)"):
        "numeric scores (all the CLI passes) compare the same as int or float arrays",
    ("label_score_arrays", "np.asarray(scores, )"): "the same as dtype=None",
    ("predict", "np.asarray(scores, dtype=None)"): "numeric scores compare the same without the cast",
    ("predict", "np.asarray(scores, )"): "the same as dtype=None",
    ("confusion_counts", "astype(None)"): "float 0.0/1.0 compare equal to 0/1",
    ("youden_threshold", "roc_curve(y, s, )"):
        "drop_intermediate only drops collinear points; the first (highest) maximum of J is always a corner",
    ("youden_threshold", "drop_intermediate=True"): "the same as the default above",
    ("_metrics_from_split_scores", ".astype(None)"): "integer counts divide to the same floats",
    ("_metrics_from_split_scores", 'divide=None'):
        "no ratio has a non-zero numerator over a zero denominator (tp + fn = 0 means tp = 0), so 'divide' never fires",
    ("_metrics_from_split_scores", 'errstate(invalid="ignore", )'): "the same as divide=None",
    ("bootstrap_intervals", 'simplefilter("ignore", )'): "silences more warnings, changes no number",
    ("_bootstrap", "vectorized=None"): "scipy infers vectorized=True from the statistic's axis argument",
    ("_bootstrap", "(line removed) vectorized=True"): "the same as vectorized=None",
    ("_bootstrap", "vectorized=False"): "scipy then calls the statistic per resample: slower, same numbers",
    ("_bootstrap", "_metrics_from_split_scores(p, n, threshold, )"): "scipy always passes axis=-1, the default",
    ("_bootstrap", 'method="PERCENTILE"'): "scipy lower-cases the method name",
    ("_midranks", "rankdata(x, )"): 'method="average" is scipy\'s default',
    ("roc_band", "np.full_like(grid, None)"): "a float array filled with None holds NaN",
}  # fmt: skip


def survivors() -> list[tuple[str, str, str]]:
    out = subprocess.run([*MUTMUT, "results"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    names = [line.split(":")[0].strip() for line in lines if "survived" in line]
    rows = []
    for name in names:
        diff = subprocess.run([*MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True).stdout
        added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        function = re.sub(r"__mutmut_\d+$", "", name.rsplit(".", 1)[-1]).removeprefix("x_")
        removed = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
        rows.append((name, function, added[0] if added else "(line removed) " + (removed[0] if removed else "")))
    return rows


def main() -> int:
    stats = json.loads((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    rows = survivors()
    equivalent, gaps = [], []
    for name, function, line in rows:
        reason = next((r for (f, text), r in EQUIVALENT.items() if f == function and text in line), None)
        (equivalent if reason else gaps).append((name, line, reason))
    total, killed = stats["total"], stats["killed"] + stats["timeout"]
    live = total - len(equivalent)
    score = killed / live if live else 1.0
    print(f"mutants {total}, killed {killed}, survived {stats['survived']} (equivalent {len(equivalent)}, "
          f"not equivalent {len(gaps)}), no tests {stats['no_tests']}: "
          f"{score:.1%} of the non-equivalent killed\n")  # fmt: skip
    print("| survivor | mutated line | equivalent because |\n|---|---|---|")
    for name, line, reason in equivalent + gaps:
        why = reason or "**not equivalent: a test gap**"
        print(f"| `{name.rsplit('.', 1)[-1]}` | `{line.replace('|', '/')}` | {why} |")
    return 0 if score >= 0.9 and not gaps else 1


if __name__ == "__main__":
    sys.exit(main())

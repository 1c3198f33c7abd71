"""Summarise a `mutmut run` (make mutation): killed, survived, and each survivor either matched to a reviewed
reason why it is equivalent (it cannot change a result covidct reports) or listed as a test gap. Exit 1 when fewer
than 90% of the non-equivalent mutants are killed or a survivor has no reviewed reason.

  .venv/bin/python tools/mutation_report.py            # after mutmut run; prints the Markdown for MUTATION.md
  .venv/bin/python tools/mutation_report.py --review   # the survivors with their line hashes, for review
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [str(Path(sys.executable).parent / "mutmut")]

# Reviewed equivalent survivors, waived by mutant id AND the hash of the mutated line (line_hash below): a survivor
# whose id is not here, or whose mutated line changed since the review, is a test gap until reviewed again. Each
# reason was re-checked for float32 scores (the evaluation passes float32 from the network): a cast whose removal
# changes a float32 result is not equivalent and is not waived (its mutants are killed by the float32 tests).
# Regenerate the candidates after a code change with: python tools/mutation_report.py --review
EQUIVALENT: dict[str, tuple[str, str]] = {
    "x_score_bins__mutmut_2": (
        "ae87de44af79",
        "lower clip of the bin index: scores are probabilities, never below 0 (the callers cast them to "
        "float64 first, so float32 input bins the same)",
    ),
    "x_fit_temperature__mutmut_39": (
        "7d93273d0c74",
        "minimize_scalar picks 'bounded' when bounds are given (no dtype involved)",
    ),
    "x_fit_temperature__mutmut_42": ("52eb96d121e5", "the same as method=None"),
    "x_fit_temperature__mutmut_48": ("3020bd319972", "scipy lower-cases the method name"),
    "x_confusion_counts__mutmut_2": (
        "01cf336ccdc4",
        "labels are 0/1 integers: float 0.0/1.0 compare equal to 0/1 (float32 scores never reach this line, "
        "only labels and predictions)",
    ),
    "x_confusion_counts__mutmut_5": (
        "18c4efe87b5d",
        "predictions are 0/1 integers from predict(): float 0.0/1.0 compare equal to 0/1",
    ),
    "x_youden_threshold__mutmut_12": (
        "47f984820a2b",
        "drop_intermediate only drops collinear points; the first (highest) maximum of J is always a corner",
    ),
    "x_youden_threshold__mutmut_13": ("00b610fa138b", "the same as the default above"),
    "x__metrics_from_split_scores__mutmut_2": (
        "2e7cedf6e22b",
        "astype(None) is astype(float64): integer counts become the same floats",
    ),
    "x__metrics_from_split_scores__mutmut_11": ("cb4573898d32", "the same as above for the true negatives"),
    "x__metrics_from_split_scores__mutmut_21": (
        "112c6cc73de3",
        "no ratio has a non-zero numerator over a zero denominator (tp + fn = 0 means tp = 0), so 'divide' never fires",
    ),
    "x__metrics_from_split_scores__mutmut_23": ("65b364a2105e", "the same as divide=None"),
    "x_bootstrap_intervals__mutmut_27": ("d11013c28ff8", "silences more warnings, changes no number"),
    "x__bootstrap__mutmut_6": ("54bebcd27fbe", "scipy infers vectorized=True from the statistic's axis argument"),
    "x__bootstrap__mutmut_14": ("4938bd3015ca", "the same as vectorized=None"),
    "x__bootstrap__mutmut_25": ("f6b5314bedad", "scipy always passes axis=-1, the default"),
    "x__bootstrap__mutmut_27": ("6a439ee0e79d", "scipy lower-cases the method name"),
    "x__bootstrap__mutmut_28": ("93e1b49701e1", "scipy then calls the statistic per resample: slower, same numbers"),
    "x__midranks__mutmut_4": ("8f3566310d12", "method='average' is scipy's default"),
    "x_roc_band__mutmut_30": ("cef795357be0", "a float64 array filled with None holds NaN"),
    "x_roc_band__mutmut_34": ("8e20a4038e5e", "a float64 array filled with None holds NaN"),
}


def line_hash(line: str) -> str:
    """The first 12 hex digits of the SHA-256 of a mutated line, whitespace-stripped."""
    return hashlib.sha256(line.strip().encode()).hexdigest()[:12]


def waiver(name: str, line: str) -> str | None:
    """The reviewed reason a survivor is equivalent, or None: an unknown id, or a line that changed since review."""
    entry = EQUIVALENT.get(name.rsplit(".", 1)[-1])
    return entry[1] if entry and entry[0] == line_hash(line) else None


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
    if "--review" in sys.argv:  # candidates for EQUIVALENT, to be reviewed one by one before they are pasted in
        for name, _, line in rows:
            print(f'    "{name.rsplit(".", 1)[-1]}": ("{line_hash(line)}", "REASON"),  # {line}')
        return 0
    for name, _function, line in rows:
        reason = waiver(name, line)
        (equivalent if reason else gaps).append((name, line, reason))
    total, killed = stats["total"], stats["killed"] + stats["timeout"]
    live = total - len(equivalent)
    score = killed / live if live else 1.0
    print(
        f"mutants {total}, killed {killed}, survived {stats['survived']} (equivalent {len(equivalent)}, "
        f"not equivalent {len(gaps)}), no tests {stats['no_tests']}: "
        f"{score:.1%} of the non-equivalent killed\n"
    )
    print("| survivor | mutated line | equivalent because |\n|---|---|---|")
    for name, line, reason in equivalent + gaps:
        why = reason or "**not equivalent: a test gap**"
        print(f"| `{name.rsplit('.', 1)[-1]}` | `{line.replace('|', '/')}` | {why} |")
    return 0 if score >= 0.9 and not gaps else 1


if __name__ == "__main__":
    sys.exit(main())

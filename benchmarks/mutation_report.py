"""Summarise a `mutmut run` (make mutation): killed, survived, and each survivor either matched to a reviewed
reason why it is equivalent (it cannot change a result covidct reports) or listed as a test gap. Exit 1 when fewer
than 90% of the non-equivalent mutants are killed or a survivor has no reviewed reason.

  .venv/bin/python benchmarks/mutation_report.py            # after mutmut run; prints the Markdown for MUTATION.md
  .venv/bin/python benchmarks/mutation_report.py --review   # the survivors with their line hashes, for review
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
# Regenerate the candidates after a code change with: python benchmarks/mutation_report.py --review
EQUIVALENT: dict[str, tuple[str, str]] = {
}  # fmt: skip


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

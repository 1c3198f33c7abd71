"""RunDir owns the run folder: no other module of src spells a run-folder file or folder name (a layout change is
one edit in runs/__init__.py, and every reader and writer follows)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"
# The names of RunDir's layout (runs/__init__.py), as string literals (quotes included), and the eval- prefix of
# evaluation folders.
LAYOUT = re.compile(
    r"""["'](config\.yaml|summary\.json|metrics\.csv|train\.log|report\.html|threshold\.json|val_last_epoch\.csv|"""
    r"""checkpoints|best\.ckpt|last\.ckpt|export|ood|audit|backbone\.safetensors|eval-[^"']*)["']"""
)
ALLOWED = {
    # torch.hub's own weight cache is a "checkpoints" folder of torch's, not of a run
    ("models/backbones.py", "checkpoints"),
    # `covidct data audit` (a sub-command) writes to audit/ of the current folder, not of a run
    ("cli/data.py", "audit"),
    # dictionary keys and sub-commands named "ood"/"export", not paths
    ("inference/export.py", "ood"),
    ("inference/load.py", "ood"),
    ("reporting/html.py", "ood"),
    ("evaluation/scoring.py", "ood"),
    ("evaluation/summary.py", "ood"),
    ("evaluation/writing.py", "ood"),
    ("reporting/study.py", "ood"),
    ("cli/inference.py", "export"),
    ("api/__init__.py", "export"),  # the names of the API's functions in __all__
    ("api/__init__.py", "audit"),
    ("api/data.py", "audit"),  # `cct.audit`'s default output folder, of the current folder (as covidct data audit)
    ("cli/ood.py", "ood"),
    # a setting's name (cli/common.py's argument groups) and command names (cli/guide.py's overview)
    ("cli/common.py", "ood"),
    ("cli/guide.py", "ood"),
    ("cli/guide.py", "export"),
}


def layout_literals(root: Path = SRC) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "runs/__init__.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in LAYOUT.finditer(line):
                if (rel, m.group(1)) not in ALLOWED:
                    out.append(f"{rel}:{n}: {m.group(0)}")
    return out


def test_only_rundir_names_the_run_folders_files():
    assert layout_literals() == []


def test_the_check_sees_a_hand_built_path(tmp_path):
    (tmp_path / "x.py").write_text('p = run_dir / "summary.json"\nq = run / f"eval-{split}"\n')
    assert layout_literals(tmp_path) == ['x.py:1: "summary.json"', 'x.py:2: "eval-{split}"']

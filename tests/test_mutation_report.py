"""tools/mutation_report.py waives a surviving mutant only by its id and the hash of its mutated line."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "mutation_report.py"


@pytest.fixture
def report(monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    line = "p = np.clip(np.asarray(p, dtype=None), _EPS, 1 - _EPS)"
    monkeypatch.setattr(module, "EQUIVALENT", {"x_logit__mutmut_9": (module.line_hash(line), "reviewed")})
    return module, line


def test_a_reviewed_survivor_is_waived_by_id_and_line(report):
    module, line = report
    assert module.waiver("covidct.evaluation.calibration.x_logit__mutmut_9", line) == "reviewed"
    assert module.waiver("covidct.evaluation.calibration.x_logit__mutmut_9", "  " + line + " ") == "reviewed"


def test_a_changed_line_or_another_id_is_not_waived(report):
    module, line = report
    assert module.waiver("covidct.evaluation.calibration.x_logit__mutmut_9", line.replace("None", "float")) is None
    assert module.waiver("covidct.evaluation.calibration.x_logit__mutmut_10", line) is None


def test_every_waiver_names_a_hash_and_a_reason():
    spec = importlib.util.spec_from_file_location("mutation_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, (digest, reason) in module.EQUIVALENT.items():
        assert "__mutmut_" in name and len(digest) == 12 and int(digest, 16) >= 0
        assert reason and reason != "REASON"

"""covidct adapt on a small synthetic site: the curve's files, the adapted run that loads everywhere a run loads,
and the refusals (one class, too few groups, groups straddling classes, images the run trained on)."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from covidct.inference.load import load_trained
from covidct.runs import RunDir
from tests.conftest import synthetic_ct


def site_csv(root, n_groups=5, per_group=3, seed=0, straddle=False):
    """A site as a CSV of path,label,group: n_groups patients per class, a few slices each."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in (0, 1):
        for g in range(n_groups):
            for k in range(per_group):
                path = root / f"p{label}_{g}_{k}.png"
                Image.fromarray(synthetic_ct(rng, bool(label), (56, 48))).save(path)
                group = "shared" if straddle and g == 0 else f"patient-{label}-{g}"
                rows.append({"path": str(path), "label": ("NonCOVID", "COVID")[label], "group": group})
    with (root / "site.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    return root / "site.csv"


def test_the_curve_is_written_with_both_baselines_where_they_exist(trained_run, tmp_path, capsys):
    site = site_csv(tmp_path / "site")
    out = tmp_path / "curve"
    assert (
        main(
            [
                "adapt",
                str(trained_run),
                "--source",
                f"site={site}",
                "--curve",
                "1",
                "2",
                "--draws",
                "2",
                "--out",
                str(out),
                "--no-group-duplicates",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert {(r["strategy"], r["k"]) for r in rows} >= {("zero-shot", "1"), ("head", "1"), ("head", "2"), ("lp-ft", "2")}
    draws = list(csv.DictReader((out / "curve_draws.csv").open()))
    assert len([d for d in draws if d["strategy"] == "head"]) == 4 and (out / "curve.png").stat().st_size > 1000
    assert "| head | 2 |" in (out / "curve.md").read_text()
    again = tmp_path / "again"
    main(
        [
            "adapt",
            str(trained_run),
            "--source",
            f"site={site}",
            "--curve",
            "1",
            "2",
            "--draws",
            "2",
            "--out",
            str(again),
            "--no-group-duplicates",
        ]
    )
    assert (again / "curve_draws.csv").read_text() == (out / "curve_draws.csv").read_text()  # the seed repeats it


def test_the_adapted_model_is_an_ordinary_run_that_names_its_site(trained_run, tmp_path, capsys):
    site = site_csv(tmp_path / "site")
    parent = tmp_path / "adapted"
    assert (
        main(["adapt", str(trained_run), "--source", f"site={site}", "--out", str(parent), "--no-group-duplicates"])
        == 0
    )
    out = capsys.readouterr().out
    assert "validated at the site by leave-groups-out: AUC" in out
    run = next(parent.iterdir())
    model = load_trained(run)
    # before adapting, the site tested as a batch against the source model's reference (the tiny run has none: the
    # record says why), and the adapted run scores with its own checked graph
    before_adapting = model.card.adaptation["site_shift_before"]
    assert before_adapting["n"] == 30
    assert before_adapting["tested"] or "not tested as a batch" in out
    assert model.session is not None and RunDir(run).scorer_graph_path.is_file()
    assert model.card.adaptation["site"] == "site" and model.card.adaptation["groups"] == 10
    assert model.card.adaptation["strategy"].startswith("lp-ft")
    assert model.card.threshold == pytest.approx(json.loads((run / "threshold.json").read_text())["threshold"])
    assert model.ood is not None and model.ood.info["n_train"] == 16 + 30  # its training images and the site's
    site_detector = model.ood.others[0]  # the site's own detector, thresholded on its patients held out in turn
    assert site_detector.info["source"] == "site" and site_detector.info["n_train"] == 30
    assert site_detector.info["threshold_on"] == "out of fold (5 folds by group)"
    before = json.loads((run / "ood" / "ood.json").read_text())
    assert main(["ood", "fit", str(run)]) == 0  # a refit keeps the site (found where the adaptation record says)
    assert "site: 30 images, threshold on out of fold" in capsys.readouterr().out
    after = json.loads((run / "ood" / "ood.json").read_text())
    assert after["per_source"] == before["per_source"] and after["sources"][0]["threshold"] == pytest.approx(
        before["sources"][0]["threshold"]
    )
    image = next((tmp_path / "site").glob("*.png"))
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["evaluate", str(run), "--split", "test", "--bootstrap", "0"]) == 0
    assert main(["export", str(run)]) == 0 and load_trained(run / "export").card.adaptation["images"] == 30
    summary = json.loads((run / "summary.json").read_text())  # adapted before the record said where the site is
    del summary["adaptation"]["site_spec"]
    (run / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["ood", "fit", str(run)]) != 0 and "pass --site NAME=PATH" in capsys.readouterr().err
    assert json.loads((run / "ood" / "ood.json").read_text()) == after  # refused: nothing touched


def test_bad_sites_are_refused_with_nothing_written(trained_run, tmp_path, capsys):
    one = tmp_path / "one"
    site = site_csv(tmp_path / "s1")
    rows = [r for r in csv.DictReader(site.open()) if r["label"] == "COVID"]
    one.mkdir()
    with (one / "one.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {
        f"one={one / 'one.csv'}": "one class only",
        f"mixed={site_csv(tmp_path / 's2', straddle=True)}": "hold both classes",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for spec, message in cases.items():
        assert (
            main(["adapt", str(trained_run), "--source", spec, "--out", str(tmp_path / "x"), "--no-group-duplicates"])
            == 2
        )
        err = capsys.readouterr().err
        assert "covidct: error:" in err and message in err, err
    assert (
        main(
            [
                "adapt",
                str(trained_run),
                "--source",
                f"s={site}",
                "--curve",
                "9",
                "--out",
                str(tmp_path / "x"),
                "--no-group-duplicates",
            ]
        )
        == 2
    )
    assert "k = 9 groups per class asked, but class 0 has 5 group(s)" in capsys.readouterr().err
    seen = tmp_path / "seen"
    shutil.copytree(trained_run.parent.parent / "covid-ct" / "Images-processed", seen)
    assert main(["adapt", str(trained_run), "--source", f"seen={seen}", "--out", str(tmp_path / "x")]) == 2
    assert "--allow-overlap" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "seen"])  # no x/ written
    detector = (trained_run / "ood" / "ood.json").read_bytes()
    assert main(["ood", "fit", str(trained_run), "--site", f"s={site}"]) == 2  # its model never learned the site
    assert "was not adapted" in capsys.readouterr().err
    assert (trained_run / "ood" / "ood.json").read_bytes() == detector


def test_a_site_with_one_patient_of_a_class_is_refused_by_name(trained_run, tmp_path):
    import covidct.api as cct

    site = cct.load_site(trained_run, f"site={site_csv(tmp_path / 'site', n_groups=1, per_group=4)}")
    with pytest.raises(cct.DataError, match=r"site site: 1 NonCOVID and 1 COVID group.*at least 2 of each class"):
        cct.adapt(trained_run, site, strategy="head", out=tmp_path / "adapted")
    assert not (tmp_path / "adapted").exists()

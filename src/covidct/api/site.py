"""covidct.api at a site: its labelled patients (`load_site`), the learning curve (`learning_curve`) and the model
adapted to it (`adapt`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.api.model import PathLike
from covidct.config import DEFAULT_STRATEGY, CurvePlan
from covidct.errors import ConfigError
from covidct.runs.records import Adaptation

if TYPE_CHECKING:  # the adaptation code is imported when used (it costs every command two seconds)
    from covidct.adaptation.site import Site


def load_site(run: PathLike, site: str, allow_overlap: bool = False, group_duplicates: bool = True) -> Site:
    """A site's labelled images (NAME=FOLDER, a folder or a CSV with a group column: groups are patients), checked
    against `run`: two classes, no image the run trained on (unless allow_overlap), no patient holding both classes.
    group_duplicates: near-duplicate images are put in one group (a patient's slices that repeat).

    Example::

        site = cct.load_site("runs/demo", "site=/data/site.csv")
        site.group_counts()        # patients per class: {0: 40, 1: 38}
    """
    from covidct.adaptation.site import load_site as load

    return load(Path(run), site, allow_overlap, group_duplicates)


def learning_curve(
    run: PathLike, site: str | Site, plan: CurvePlan | None = None, out: PathLike | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """`covidct adapt --curve`: how each adaptation strategy does with k labelled patients (groups) per class of
    the site (a `load_site` result, or its spec loaded with the defaults), each k drawn `draws` times and scored on
    the site's other patients; a row per strategy and k (auc, auc_ci, auc_worst, ...), also written with a table and
    a plot to `out` (default RUN/curve-NAME/). plan: a CurvePlan, or its fields as keywords.

    Example::

        curve = cct.learning_curve("runs/demo", "site=/data/site.csv", ks=(2, 5, 10))
    """
    from covidct.adaptation.curve import run_curve

    if plan is None:
        try:
            plan = CurvePlan(**fields)
        except TypeError:
            known = [f.name for f in dataclasses.fields(CurvePlan)]
            raise ConfigError(f"learning_curve takes the plan's fields {known}, got {sorted(fields)}") from None
    elif fields:
        raise ConfigError(f"learning_curve: give the plan or its fields {sorted(fields)}, not both")
    site = load_site(run, site) if isinstance(site, str) else site
    return run_curve(Path(run), site, Path(out) if out else Path(run) / f"curve-{site.name}", plan)


def adapt(run: PathLike, site: str | Site, strategy: str = DEFAULT_STRATEGY, out: PathLike | None = None) -> Adaptation:
    """`covidct adapt`: the model of `run` adapted to all of the site's labelled images (a `load_site` result, or its
    spec loaded with the defaults) by `strategy`, written as a new run folder beside `run` (or under `out`), with the
    operating point chosen on the site's grouped cross-validation.

    Example::

        adapted = cct.adapt("runs/demo", "site=/data/site.csv")
        print(adapted.record["text"])
    """
    from covidct.adaptation.adapt import adapt_run
    from covidct.runs import RunDir

    site = load_site(run, site) if isinstance(site, str) else site
    folder = adapt_run(Path(run), site, Path(out) if out else Path(run).parent, strategy)
    return Adaptation(folder, RunDir(folder).summary()["adaptation"])

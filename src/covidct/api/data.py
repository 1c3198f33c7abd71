"""covidct.api on data: get a public dataset (`download`) and audit a dataset for shortcuts and duplicates (`audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from covidct.api.model import PathLike

if TYPE_CHECKING:
    from covidct.data.audit.report import AuditReport


def download(
    source: str = "covid-ct",
    dest: PathLike | None = None,
    force: bool = False,
    base_url: str | None = None,
    progress: bool = False,
) -> Path:
    """`covidct data download`: a known source (covid-ct, sars-cov-2-ct) downloaded, checked and installed whole (never
    half-written) in `dest` (default: its folder; covid-ct: $COVIDCT_DATA_DIR, else data/covid-ct); force: replace
    an existing folder; base_url: a mirror of the COVID-CT files. Returns the folder.

    Example::

        folder = cct.download("covid-ct", "data/covid-ct")
    """
    from covidct.config import resolve_data_dir
    from covidct.data.sources import source_dir, source_info

    source_info(source)  # an unknown name lists the known ones
    if source == "sars-cov-2-ct":
        from covidct.data.downloads.kaggle import download_sars_cov_2_ct

        return download_sars_cov_2_ct(Path(dest) if dest else source_dir(source), force=force)
    from covidct.data.downloads.covid_ct import OFFICIAL_BASE_URL, download_dataset

    folder = resolve_data_dir(str(dest) if dest else None)
    return download_dataset(folder, base_url=base_url or OFFICIAL_BASE_URL, force=force, progress=progress)


def audit(
    data_dir: PathLike | None = None,
    data_csv: PathLike | None = None,
    sources: list[str] | None = None,
    out: PathLike = "audit",
    progress: bool = False,
) -> AuditReport:
    """`covidct data audit`: a dataset (sources by name or NAME=PATH, else a CSV or a folder) checked for shortcuts
    (a classifier on image statistics alone), near-duplicates within and across splits and sources, and odd files;
    written to `out` (audit.md, audit.json, near_duplicates.csv/.png). Returns the report: `.summary()`,
    `.warnings`, `.near_duplicates`.

    Example::

        report = cct.audit(sources=["covid-ct", "sars-cov-2-ct"])
        report.warnings
    """
    from covidct.config import resolve_data_dir
    from covidct.data.audit.report import audit_dataset, write_audit
    from covidct.data.datasets import load_splits
    from covidct.data.sources import load_sources

    if sources:
        data = load_sources(list(sources))
    else:
        data = load_splits(resolve_data_dir(str(data_dir) if data_dir else None), str(data_csv) if data_csv else None)
    report = audit_dataset(data, progress=progress)
    write_audit(report, out)
    return report

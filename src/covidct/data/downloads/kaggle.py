"""Download the SARS-CoV-2 CT-scan set (Soares et al.) through the Kaggle API, convert it to grey PNG as the
project's copy is, check the counts and install it atomically (a staging folder renamed into place).

Every original file becomes 8-bit grey ("L"): in the original, every non-COVID file is RGBA while a third of the
COVID ones are RGB, a colour-mode shortcut a model must not be able to learn.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from covidct.data.images import IMAGE_SUFFIXES, load_rgb
from covidct.errors import DataError

DATASET = "plameneduardo/sarscov2-ctscan-dataset"
FOLDERS = {"COVID": "COVID", "non-COVID": "nonCOVID", "nonCOVID": "nonCOVID"}
EXPECTED = {"COVID": 1252, "nonCOVID": 1229}
MANUAL = (
    "Kaggle needs an account and an API token: put kaggle.json (kaggle.com > Settings > API > Create New Token) "
    "in ~/.kaggle/ (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY, then run this again. By hand: "
    f"kaggle datasets download -d {DATASET}, unzip it, and point covidct at the folder holding COVID/ and "
    "non-COVID/ (--source sars-cov-2-ct=PATH)."
)


def kaggle_api() -> Any:
    """An authenticated KaggleApi, or DataError saying what is missing (the package, or the credentials)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise DataError("downloading sars-cov-2-ct needs the kaggle package: pip install 'covidct[kaggle]'") from None
    except (Exception, SystemExit) as e:  # older kaggle versions authenticate on import, some exit
        raise DataError(f"Kaggle credentials are missing or wrong ({type(e).__name__}: {e}). {MANUAL}") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as e:
        raise DataError(f"Kaggle credentials are missing or wrong ({type(e).__name__}: {e}). {MANUAL}") from None
    return api


def install_from_zip(archive: Path, target: Path) -> dict[str, int]:
    """Each image under a COVID/ or non-COVID/ folder of the archive, as grey PNG in target/COVID|nonCOVID."""
    counts = dict.fromkeys(EXPECTED, 0)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or ".." in parts or PurePosixPath(info.filename).is_absolute():
                continue
            folder = next((FOLDERS[p] for p in parts[:-1] if p in FOLDERS), None)
            if folder is None or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            out = target / folder / (PurePosixPath(parts[-1]).stem + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out.with_suffix(".tmp"), "wb") as tmp:
                shutil.copyfileobj(src, tmp)
            load_rgb(out.with_suffix(".tmp")).convert("L").save(out)
            out.with_suffix(".tmp").unlink()
            counts[folder] += 1
    return counts


def download_sars_cov_2_ct(
    dest: str | Path, force: bool = False, api: Any = None, expected: dict | None = None
) -> Path:
    """Download through the Kaggle API into a staging folder, convert, check, rename into place."""
    dest = Path(dest)
    expected = EXPECTED if expected is None else expected
    if dest.exists() and not force:
        found = {f: len(list((dest / f).glob("*.png"))) for f in EXPECTED}
        if all(found[f] >= n for f, n in expected.items()):
            return dest
        raise DataError(
            f"{dest} exists but is not a complete sars-cov-2-ct copy ({found}); use --force or another --dest"
        )
    api = api or kaggle_api()
    staging = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "download").mkdir(parents=True)
        try:
            api.dataset_download_files(DATASET, path=str(staging / "download"), unzip=False, quiet=True)
        except Exception as e:
            raise DataError(f"the Kaggle download of {DATASET} failed ({type(e).__name__}: {e}). {MANUAL}") from None
        archives = sorted((staging / "download").glob("*.zip"))
        if not archives:
            raise DataError(f"the Kaggle download of {DATASET} gave no zip file. {MANUAL}")
        try:
            counts = install_from_zip(archives[0], staging / "images")
        except (zipfile.BadZipFile, OSError, DataError) as e:
            raise DataError(f"the downloaded archive {archives[0].name} is damaged ({e}); run this again") from None
        short = {f: (counts[f], n) for f, n in expected.items() if counts[f] < n}
        if short:
            raise DataError(f"the download holds too few images: {short} (found, expected); run this again")
        old = dest.parent / f".{dest.name}.old"
        if dest.exists():
            dest.rename(old)
        (staging / "images").rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest

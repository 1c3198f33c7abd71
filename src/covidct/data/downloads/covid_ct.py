"""Download the official COVID-CT zips and split files, check them, and install them atomically.

Everything is fetched and extracted into a hidden staging folder beside the destination and checked there;
only a dataset that passes every check is renamed into place, so an interrupted or corrupt download never
leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from covidct.data.datasets import (
    CLASS_NAMES,
    OFFICIAL_COUNTS,
    SPLITS,
    official_image_dir,
    official_split_file,
    read_split_file,
)
from covidct.data.images import IMAGE_SUFFIXES
from covidct.errors import DataError

OFFICIAL_BASE_URL = "https://github.com/UCSD-AI4H/COVID-CT/raw/master/"


def official_files() -> list[str]:
    """Paths, relative to the repository root, of the files that make up the dataset."""
    zips = [f"Images-processed/CT_{c}.zip" for c in CLASS_NAMES]
    splits = [f"Data-split/{c}/{s}CT_{c}.txt" for c in CLASS_NAMES for s in SPLITS]
    return zips + splits


def fetch(url: str, dest: Path, timeout: float = 60.0, progress: bool = False) -> None:
    """Stream url into dest; a connection error, HTTP error or short read raises DataError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"download of {url} failed: {reason}. Check the network or use --base-url") from None
    if total is not None and received != total:
        raise DataError(f"download of {url} was interrupted: got {received} of {total} bytes")


def extract_images(zip_path: Path, target: Path) -> int:
    """Extract the images of a zip flat into target (folders and macOS metadata dropped); returns the count."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"zip {zip_path.name} is corrupt: member {bad} fails its CRC check")
            target.mkdir(parents=True, exist_ok=True)
            n = 0
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or "__MACOSX" in name.parts or name.name.startswith("."):
                    continue
                if name.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                # Only the base name is used, so a member like ../../x cannot escape the target.
                with zf.open(info) as src, open(target / name.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
            return n
    except zipfile.BadZipFile as e:
        raise DataError(f"zip {zip_path.name} is corrupt or incomplete: {e}") from None


def verify_dataset(root: Path, expected: dict[str, dict[str, int]] | None = OFFICIAL_COUNTS) -> list[str]:
    """Problems with a dataset in the official layout (empty list: all good)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for class_name in CLASS_NAMES:
        image_dir = official_image_dir(root, class_name)
        if not image_dir.is_dir():
            problems.append(f"folder {image_dir} is missing")
            continue
        on_disk = {p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for split in SPLITS:
            split_file = official_split_file(root, class_name, split)
            try:
                names = read_split_file(split_file)
            except DataError as e:
                problems.append(str(e))
                continue
            missing = [n for n in names if n not in on_disk]
            if missing:
                problems.append(f"{split_file.name} names {len(missing)} missing file(s), e.g. {missing[0]}")
            for n in names:
                key = f"{class_name}/{n}"
                if key in seen:
                    problems.append(f"{key} is listed in both {seen[key]} and {split}")
                seen[key] = split
            want = expected[split][class_name] if expected else None
            if want is not None and len(names) != want:
                problems.append(f"{split_file.name} lists {len(names)} images, expected {want}")
        if expected:
            want_total = sum(expected[s][class_name] for s in SPLITS)
            if len(on_disk) != want_total:
                problems.append(f"{image_dir} holds {len(on_disk)} images, expected {want_total}")
    return problems


def download_dataset(
    dest: str | Path,
    base_url: str = OFFICIAL_BASE_URL,
    expected: dict[str, dict[str, int]] | None = OFFICIAL_COUNTS,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download, extract and check COVID-CT into dest; dest appears only when everything checks out."""
    dest = Path(dest)
    if dest.exists() and not force:
        problems = verify_dataset(dest, expected)
        if not problems:
            return dest
        raise DataError(
            f"{dest} exists but is not a complete COVID-CT dataset ({'; '.join(problems[:3])}). "
            "Use --force to replace it, or choose another --dest"
        )
    staging = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted earlier attempt
    try:
        base = base_url if base_url.endswith("/") else base_url + "/"
        for rel in official_files():
            fetch(base + rel, staging / "downloads" / rel, timeout=timeout, progress=progress)
        for class_name in CLASS_NAMES:
            zip_path = staging / "downloads" / f"Images-processed/CT_{class_name}.zip"
            extract_images(zip_path, official_image_dir(staging, class_name))
            for split in SPLITS:
                src = staging / "downloads" / f"Data-split/{class_name}/{split}CT_{class_name}.txt"
                dst = official_split_file(staging, class_name, split)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        shutil.rmtree(staging / "downloads")
        problems = verify_dataset(staging, expected)
        if problems:
            raise DataError("downloaded dataset fails its checks:\n  " + "\n  ".join(problems))
        old = dest.parent / f".{dest.name}.old"
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest

"""Atomic writes: a reader (or a crash) never sees a half-written file where a good one was."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from covidct.errors import DataError, ModelError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def files_under(folder: str | Path, most: int | None = None) -> list[Path]:
    """Every file under `folder`, sorted, found through symbolic links to folders and files alike: hospitals build
    site folders from links into their archive. A link back to a folder it lies in is a loop and is not entered; two
    links to the same folder are two folders (Path.rglob follows neither before Python 3.13; os.walk's followlinks
    has no loop guard). Broken links and unreadable folders hold no files. `most`: how many files and folders may be
    listed (InputLimits.folder_entries where data/images.listed_files asks): links that fan out, each folder linking
    twice to the next, would list 2**depth of them, so past it a DataError names the folder and the limit."""
    found: list[Path] = []
    entries_seen = 0

    def counted() -> None:
        nonlocal entries_seen
        entries_seen += 1
        if most is not None and entries_seen > most:
            raise DataError(
                f"{folder}: more than {most:,} files and folders under it (links followed: a folder reached through "
                "two links is listed twice); score a smaller folder, or raise the limit folder_entries "
                "(--max-folder-entries)"
            )

    def entries_of(path: str) -> list[os.DirEntry]:
        try:
            return list(os.scandir(path))
        except OSError:
            return []

    try:
        top = os.stat(folder)
    except OSError:
        return []
    # a stack, not recursion: a folder nested deeper than Python's recursion limit is still listed
    stack = [(str(folder), frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        path, ancestors = stack.pop()
        for entry in entries_of(path):
            try:
                if entry.is_dir():  # follows links
                    st = os.stat(entry.path)
                    if (st.st_dev, st.st_ino) not in ancestors:
                        counted()
                        stack.append((entry.path, ancestors | {(st.st_dev, st.st_ino)}))
                elif entry.is_file():
                    counted()
                    found.append(Path(entry.path))
            except OSError:
                continue
    return sorted(found)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (NaN written as null, so any JSON reader can load it)."""
    return write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


# A cell a spreadsheet would read as a formula (OWASP "CSV Injection"): it starts with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value` as a CSV cell no spreadsheet runs: text that starts like a formula gets a leading apostrophe (OWASP's
    advice; spreadsheets show the text as written). Numbers, and text that is a number ("-0.5"), stay as they are;
    the JSON beside a CSV keeps the original text.

    >>> safe_cell("=HYPERLINK(1)"), safe_cell("-0.5"), safe_cell(3)
    ("'=HYPERLINK(1)", '-0.5', 3)
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def _unsafe_cell(value: str) -> str:
    """safe_cell undone: what covidct wrote, read back."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys) as CSV text with a header. The one writer of every CSV covidct writes: each
    cell (and each header) passes through safe_cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[safe_cell(k) for k in rows[0]])
    writer.writeheader()
    writer.writerows([{safe_cell(k): safe_cell(v) for k, v in row.items()} for row in rows])
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts (cells as written before csv_text neutralised them); [] when the
    file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, start=2):
        if None in row:  # csv puts the cells past the header's under None: a damaged file, refused by name
            raise DataError(f"{path} line {line} has more cells than its header; the file is damaged or not this one")
    return [{_unsafe_cell(k): _unsafe_cell(v or "") for k, v in row.items()} for row in rows]


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Atomically write rows as CSV."""
    return write_text(path, csv_text(rows))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def read_json(path: str | Path, fix: str) -> Any:
    """The value of a JSON file covidct wrote (a run folder's or an export's records): a ModelError naming the file,
    what is wrong and `fix` when it cannot be read, is not UTF-8 or not JSON, or nests deeper than Python's parser
    goes (its RecursionError, a bare traceback before)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "nested deeper than a parser goes" if isinstance(e, RecursionError) else f"{type(e).__name__}: {e}"
        raise ModelError(f"{path} is not readable JSON ({why}); {fix}") from None

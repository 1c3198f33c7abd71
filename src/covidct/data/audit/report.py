"""A data audit: what a model could learn besides the lungs, and what leaks between splits.

- per class: file formats, colour modes and sizes (shortcut warnings when they differ between classes);
- exact duplicates: the same file content (SHA-256 of the bytes);
- near-duplicates: perceptual hash (imagehash's pHash, 64 bits) Hamming distance <= 8 and Pearson correlation
  of 32x32 grey thumbnails >= 0.90, or correlation >= 0.97 alone. On COVID-CT these thresholds find adjacent
  slices of one scan and the same figure saved twice; every pair is listed with both numbers so a reader can judge.
  Tolerance (tests): re-encoding as JPEG, brightness changes, resizing, and crops of about 2-3% per side; larger
  crops fall outside it;
- unreadable or truncated files, tiny images (shorter side < 64 px) and extreme aspect ratios (> 3:1).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from covidct.data.audit.info import DatasetInfo, shortcut_warnings
from covidct.data.datasets import SplitData
from covidct.data.images import image_header, load_rgb
from covidct.errors import DataError

PHASH_MAX_DISTANCE = 8
MIN_CORRELATION = 0.90
CORRELATION_ALONE = 0.97
MIN_SIDE = 64
MAX_ASPECT = 3.0
THUMB = 32


@dataclass
class ImageRecord:
    split: str
    label: int
    path: Path
    sha256: str
    phash: int
    thumb: np.ndarray  # standardised 32x32 grey thumbnail, flattened
    size: tuple[int, int]
    mode: str
    format: str
    source: str = ""
    shortcut: np.ndarray | None = None  # the shortcut classifier's features (shortcut.py)


@dataclass
class AuditReport:
    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    info: DatasetInfo
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shortcut: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        cross = [p for p in self.near_duplicates if p["cross_split"]]
        return {
            "images": sum(sum(c.values()) for c in self.counts.values()),
            "exact_duplicate_pairs": len(self.exact_duplicates),
            "near_duplicate_pairs": len(self.near_duplicates),
            "near_duplicate_pairs_across_splits": len(cross),
            "near_duplicate_pairs_across_sources": sum(p.get("cross_source", False) for p in self.near_duplicates),
            "pairs_with_conflicting_labels": sum(
                p["label_conflict"] for p in self.near_duplicates + self.exact_duplicates
            ),
            "problem_images": len(self.problems),
            "warnings": len(self.warnings),
        }


def image_record(split: str, label: int, path: Path, source: str = "") -> ImageRecord:
    """Everything the audit needs from one file (raises DataError when it cannot be read)."""
    raw = path.read_bytes() if path.is_file() else None
    if raw is None:
        raise DataError(f"image file {path} does not exist")
    mode, fmt, size = image_header(path)
    grey = load_rgb(path).convert("L")
    thumb = np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    from covidct.data.audit.shortcut import ShortcutFeatures, grey_histogram

    shortcut = ShortcutFeatures(size[0], size[1], fmt, mode, len(raw), grey_histogram(np.asarray(grey))).vector()
    return ImageRecord(
        split,
        label,
        path,
        hashlib.sha256(raw).hexdigest(),
        int(str(imagehash.phash(grey)), 16),
        thumb,
        size,
        mode,
        fmt,
        source,
        shortcut,
    )


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def near_duplicate_pairs(records: list[ImageRecord], block: int = 512) -> list[tuple[int, int, int, float]]:
    """(i, j, Hamming distance, correlation) for i < j meeting the near-duplicate rule; memory O(block x n)."""
    hashes = np.array([r.phash for r in records], dtype=np.uint64)
    thumbs = np.stack([r.thumb for r in records]) if records else np.zeros((0, THUMB * THUMB), np.float32)
    pairs = []
    for start in range(0, len(records), block):
        rows = slice(start, min(start + block, len(records)))
        dist = _popcount(hashes[rows, None] ^ hashes[None, :])
        corr = thumbs[rows] @ thumbs.T / thumbs.shape[1]
        hit = ((dist <= PHASH_MAX_DISTANCE) & (corr >= MIN_CORRELATION)) | (corr >= CORRELATION_ALONE)
        for a, j in zip(*np.nonzero(hit)):
            i = start + int(a)
            if i < j:
                pairs.append((i, int(j), int(dist[a, j]), float(corr[a, j])))
    return pairs


def _pair(records: list[ImageRecord], i: int, j: int, class_names: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    a, b = records[i], records[j]
    return {
        "a": str(a.path),
        "b": str(b.path),
        "split_a": a.split,
        "split_b": b.split,
        "class_a": class_names[a.label],
        "class_b": class_names[b.label],
        "cross_split": a.split != b.split,
        "source_a": a.source,
        "source_b": b.source,
        "cross_source": a.source != b.source,
        "label_conflict": a.label != b.label,
        **extra,
    }


def audit_dataset(data: SplitData, progress: bool = False) -> AuditReport:
    """Read every image once and audit the whole dataset: as stages, each one finding."""
    from covidct.data.audit.info import dataset_info

    info = dataset_info(data, check_images=False)
    report = AuditReport(data.class_names, data.counts(), info)
    records = read_records(data, report, progress)
    find_duplicates(records, report, data.class_names)
    report.warnings = shortcut_warnings(info, data.class_names)
    report.sources = data.source_counts()
    if len(report.sources) > 1:
        report.warnings += per_source_warnings(records, sorted(report.sources), data.class_names)
    if records:
        from covidct.data.audit.shortcut import shortcut_aucs

        report.shortcut = shortcut_aucs(
            [r.shortcut for r in records], [r.label for r in records], [r.source for r in records]
        )
        report.warnings += classifier_warnings(report.shortcut)
    if info.overlap:
        report.warnings += [f"listed in two splits: {o}" for o in info.overlap]
    return report


def read_records(data: SplitData, report: AuditReport, progress: bool) -> list[ImageRecord]:
    """Every image's record (read once); unreadable, tiny and extreme-aspect images into the report's problems,
    modes, formats and size ranges into its info."""
    from tqdm.auto import tqdm

    info = report.info
    records: list[ImageRecord] = []
    sizes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    samples = [(split, s) for split, v in data.splits.items() for s in v]
    for split, s in tqdm(samples, desc="auditing images", disable=not progress, leave=False):
        try:
            r = image_record(split, s.label, s.path, s.source)
        except (DataError, OSError) as e:
            report.problems.append({"path": str(s.path), "problem": f"unreadable: {e}"})
            continue
        records.append(r)
        name = data.class_names[r.label]
        info.modes.setdefault(name, Counter())[r.mode] += 1
        info.formats.setdefault(name, Counter())[r.format] += 1
        sizes[name].append(r.size)
        report.problems += [{"path": str(r.path), "problem": p} for p in size_problems(*r.size)]
    for name, wh in sizes.items():
        ws, hs = [w for w, _ in wh], [h for _, h in wh]
        info.sizes[name] = (min(ws), min(hs), max(ws), max(hs))
    return records


def size_problems(w: int, h: int) -> list[str]:
    out = []
    if min(w, h) < MIN_SIDE:
        out.append(f"tiny: {w}x{h} (shorter side < {MIN_SIDE} px)")
    if max(w, h) / max(1, min(w, h)) > MAX_ASPECT:
        out.append(f"extreme aspect ratio: {w}x{h} (> {MAX_ASPECT:g}:1)")
    return out


def find_duplicates(records: list[ImageRecord], report: AuditReport, class_names: tuple[str, ...]) -> None:
    """Exact duplicates (same SHA-256) and near duplicates (perceptual hash, then correlation), the pairs that bias
    a test score first: label conflicts, then pairs across splits or sources."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_hash[r.sha256].append(i)
    exact = set()
    for group in by_hash.values():
        for x, i in enumerate(group):
            for j in group[x + 1 :]:
                exact.add((i, j))
                report.exact_duplicates.append(_pair(records, i, j, class_names, sha256=records[i].sha256))
    for i, j, dist, corr in near_duplicate_pairs(records):
        if (i, j) not in exact:
            report.near_duplicates.append(
                _pair(records, i, j, class_names, phash_distance=dist, correlation=round(corr, 4))
            )
    report.near_duplicates.sort(
        key=lambda p: (not p["label_conflict"], not (p["cross_split"] or p["cross_source"]), -p["correlation"])
    )


def per_source_warnings(records: list[ImageRecord], sources: list[str], class_names: tuple[str, ...]) -> list[str]:
    """The mode/format shortcut check within each source: a shortcut can hide inside one source."""
    out = []
    for source in sources:
        own = DatasetInfo(counts={})
        for r in records:
            if r.source == source:
                own.modes.setdefault(class_names[r.label], Counter())[r.mode] += 1
                own.formats.setdefault(class_names[r.label], Counter())[r.format] += 1
        out += [w.replace("warning:", f"warning ({source}):", 1) for w in shortcut_warnings(own, class_names)]
    return out


def classifier_warnings(aucs: dict[str, float | None]) -> list[str]:
    """Warnings from the shortcut classifier's AUCs: classes or sources told apart without the lungs, or a shortcut
    that points the other way in another source."""
    out = []
    for what, auc in aucs.items():
        if auc is not None and auc >= 0.8 and ("metadata" in what or what == "source"):
            out.append(
                f"warning: the shortcut classifier tells the {what.split(' (')[0].split(',')[0]} apart "
                f"at AUC {auc:.2f} "
                f"from {'image metadata' if 'metadata' in what else 'image size, format, mode and grey histogram'}"
                " alone, without looking at the lungs"
            )
        if auc is not None and auc < 0.4 and "scored on" in what:
            out.append(
                f"warning: the shortcut classifier {what.split(', ', 1)[1]} at AUC {auc:.2f}: what tells the classes "
                "apart in one source points the other way in the other (a model trained on one source can "
                "inherit that)"
            )
    return out


def audit_markdown(report: AuditReport, max_pairs: int = 50) -> str:
    """The audit as Markdown for people."""
    s = report.summary()
    lines = [
        "# Data audit",
        "",
        "| split | " + " | ".join(report.class_names) + " |",
        "|---|" + "---|" * len(report.class_names),
    ]
    lines += [
        f"| {k} | " + " | ".join(str(v.get(c, 0)) for c in report.class_names) + " |" for k, v in report.counts.items()
    ]
    lines += ["", "| class | formats | colour modes | sizes (min-max w x h) |", "|---|---|---|---|"]
    for c in report.class_names:
        if c in report.info.sizes:
            w0, h0, w1, h1 = report.info.sizes[c]
            lines.append(
                f"| {c} | {dict(report.info.formats[c])} | {dict(report.info.modes[c])} | {w0}x{h0} - {w1}x{h1} |"
            )
    lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings or ["none"]]
    if report.shortcut:
        lines += [
            "",
            "## Shortcut classifier",
            "",
            "Cross-validated AUC (5 folds) of gradient-boosted trees on image size, aspect, file format, colour "
            "mode, bytes per pixel and a 32-bin grey histogram: no deep net, no anatomy. Near 1: the task can "
            "be solved from these alone; near 0.5: they carry no label.",
            "",
            "| what is predicted | AUC |",
            "|---|---|",
        ]
        lines += [f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |" for k, v in report.shortcut.items()]
    lines += ["", "## Summary", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in s.items()]
    for title, pairs in (("Exact duplicates", report.exact_duplicates), ("Near-duplicates", report.near_duplicates)):
        lines += ["", f"## {title}", ""]
        if not pairs:
            lines.append("none")
            continue
        lines += ["| a | b | splits | classes | pHash distance | correlation |", "|---|---|---|---|---|---|"]
        for p in pairs[:max_pairs]:
            lines.append(
                f"| {Path(p['a']).name} | {Path(p['b']).name} | {p['split_a']} / {p['split_b']} | "
                f"{p['class_a']} / {p['class_b']} | {p.get('phash_distance', 0)} | {p.get('correlation', 1.0)} |"
            )
        if len(pairs) > max_pairs:
            lines.append(f"\n... and {len(pairs) - max_pairs} more (all in near_duplicates.csv)")
    lines += ["", "## Problem images", ""] + [f"- {p['path']}: {p['problem']}" for p in report.problems or []]
    if not report.problems:
        lines.append("none")
    return "\n".join(lines) + "\n"


def write_audit(report: AuditReport, out_dir: str | Path) -> Path:
    """audit.json, audit.md, near_duplicates.csv and near_duplicates.png (side-by-side thumbnails) in out_dir."""
    from covidct.data.audit.figures import pair_sheet_figure
    from covidct.fileio import write_csv, write_json, write_text
    from covidct.fileio.plotting import save_figure

    out = Path(out_dir)
    pairs = report.exact_duplicates + report.near_duplicates
    write_json(
        out / "audit.json",
        {
            "summary": report.summary(),
            "counts": report.counts,
            "formats": {k: dict(v) for k, v in report.info.formats.items()},
            "modes": {k: dict(v) for k, v in report.info.modes.items()},
            "sizes": report.info.sizes,
            "warnings": report.warnings,
            "sources": report.sources,
            "shortcut_classifier": report.shortcut,
            "exact_duplicates": report.exact_duplicates,
            "near_duplicates": report.near_duplicates,
            "problems": report.problems,
            "rule": {
                "phash_max_distance": PHASH_MAX_DISTANCE,
                "min_correlation": MIN_CORRELATION,
                "correlation_alone": CORRELATION_ALONE,
                "min_side": MIN_SIDE,
                "max_aspect": MAX_ASPECT,
            },
        },
    )
    write_text(out / "audit.md", audit_markdown(report))
    if pairs:
        keys = list(dict.fromkeys(k for p in pairs for k in p))
        write_csv(out / "near_duplicates.csv", [{k: p.get(k, "") for k in keys} for p in pairs])
        save_figure(pair_sheet_figure(pairs[:24]), out / "near_duplicates.png")
    return out

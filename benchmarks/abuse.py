"""The abuse suite of `covidct serve`: every bomb and bad upload of issue 39 sent to a served model on loopback, one
at a time, with the server's resident-memory growth per request (its peak, from /proc: clear_refs resets the
high-water mark before each request), the most its temporary folder held while the request ran, what was left there
after it, and whether the server still answers /health.

Bounded: about 2.5 MB of ZIP, a 0.5 MB DICOM and at most one body limit (100 MB by default) of streamed zeros leave
this process; everything goes to 127.0.0.1 only. tests/integration/test_abuse.py runs it on a tiny model and checks
the bounds; on a real model (make demo's) it writes benchmarks/RELIABILITY.md's table:
    .venv/bin/python benchmarks/abuse.py RUN_OR_EXPORT [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/medical_files.py: the DICOM writers the tests use

BOUNDS = {
    "growth_mb": 600,
    "rss_mb": 2500,
    "disk_mb": 200,
    "inflight_growth_mb": 700,
}  # issue 39: per request; issue 47: six at once


@dataclass
class Server:
    url: str
    pid: int
    tmp: Path


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we looked
                total += os.path.getsize(os.path.join(root, name))
    return total


class DiskWatch:
    """The most bytes `folder` held while the block ran, polled every 10 ms."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()

    def __enter__(self) -> DiskWatch:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.folder))
            time.sleep(0.01)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.folder))


# ---- the inputs ---------------------------------------------------------------------------------------------------


def series_zip(tmp: Path) -> bytes:
    """A real little series: three 64 x 64 CT slices (a ZIP the server must accept, and clean up after)."""
    from tests.medical_files import write_dicom
    from tests.upload_files import zip_of

    rng = np.random.default_rng(0)
    hus = [rng.normal(-700, 200, (64, 64)).astype(np.float32) for _ in range(3)]
    return zip_of(
        {
            f"s/IM{k}": write_dicom(tmp / f"{k}.dcm", hu, z=float(k), instance=k + 1).read_bytes()
            for k, hu in enumerate(hus)
        }
    )


def deflate_bomb(tmp: Path) -> bytes:
    from tests.medical_files import deflated_dicom_bomb

    return deflated_dicom_bomb(tmp / "bomb.dcm", 512 * 1024 * 1024).read_bytes()


# ---- sending ------------------------------------------------------------------------------------------------------


def post(url: str, files: list[tuple[str, tuple[str, bytes]]]) -> tuple[int, str]:
    r = httpx.post(url + "/api/v1/predict", files=files, timeout=120)
    try:
        return r.status_code, str(r.json().get("detail", "scored"))
    except ValueError:
        return r.status_code, r.text[:200]


def raw_post(url: str, head: bytes, body: Callable[[], bytes | None], max_bytes: int) -> tuple[int, str]:
    """POST by hand on a socket: `head` (request line and headers), then `body()` chunks until the server answers,
    the connection closes or `max_bytes` went out; returns (status, detail) of the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head)
    sent = 0
    try:
        while sent < max_bytes and not select.select([sock], [], [], 0)[0]:
            chunk = body()
            if chunk is None:
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    body_text = answer.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace") if b"\r\n\r\n" in answer else ""
    try:
        return status, str(json.loads(body_text)["detail"])
    except (ValueError, KeyError, TypeError):
        return status, body_text[:200]


def _length(answer: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", answer.split(b"\r\n\r\n", 1)[0], re.IGNORECASE)
    return int(found.group(1)) if found else 0


BOUNDARY = "covidctabuse"
PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()


def declared_huge(url: str) -> tuple[int, str]:
    """A body declaring 600 MB (Content-Length), of which one MB is sent."""
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nContent-Length: {600 * 1024 * 1024}\r\n\r\n"
    ).encode()
    chunks = iter([PART, bytes(1024 * 1024)])
    return raw_post(url, head, lambda: next(chunks, None), 2 * 1024 * 1024)


def streamed_huge(url: str) -> tuple[int, str]:
    """A chunked body (no Content-Length) of zeros that would go on for 600 MB: refused as it streams in."""
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    first = [True]
    block = bytes(1024 * 1024)

    def chunk() -> bytes:
        data = PART if first[0] else block
        first[0] = False
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    return raw_post(url, head, chunk, 600 * 1024 * 1024)


def png(width: int, height: int) -> bytes:
    from tests.upload_files import blank_png

    return blank_png(width, height)


def cases(tmp: Path) -> list[tuple[str, Callable[[str], tuple[int, str]]]]:
    """(what, send(url) -> (status, detail)) of every bad input, then a good series ZIP and a good PNG."""
    one_mib = bytes(1024 * 1024)
    from tests.upload_files import png_header_claiming, zip_of

    many = zip_of({f"IM{i:05d}": one_mib for i in range(1999)})
    few = zip_of({f"IM{i:05d}": one_mib for i in range(150)})
    bomb, series, huge = deflate_bomb(tmp), series_zip(tmp), png_header_claiming(20000, 20000)
    rng = np.random.default_rng(1)
    slice_png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(slice_png, format="PNG")
    return [
        ("deflated DICOM, 0.5 MB inflating to 512 MB", lambda u: post(u, [("file", ("bomb.dcm", bomb))])),
        ("ZIP of 1,999 members of 1 MiB (2.3 MB)", lambda u: post(u, [("file", ("many.zip", many))])),
        ("ZIP of 150 members of 1 MiB (under the total)", lambda u: post(u, [("file", ("few.zip", few))])),
        ("body declaring 600 MB (Content-Length)", declared_huge),
        ("chunked body of 600 MB, no Content-Length", streamed_huge),
        ("image of 30 MB (over 20 MB)", lambda u: post(u, [("file", ("big.png", png(64, 64) + bytes(30 << 20)))])),
        ("two file fields", lambda u: post(u, [("file", ("a.png", png(64, 64))), ("file", ("b.png", png(64, 64)))])),
        ("PNG of 1 x 1 pixels", lambda u: post(u, [("file", ("dot.png", png(1, 1)))])),
        ("PNG header of 20,000 x 20,000 pixels", lambda u: post(u, [("file", ("huge.png", huge))])),
        ("good: a ZIP of a 3-slice series", lambda u: post(u, [("file", ("series.zip", series))])),
        ("good: a 256 x 256 PNG", lambda u: post(u, [("file", ("slice.png", slice_png.getvalue()))])),
    ]


# ---- running ------------------------------------------------------------------------------------------------------


def start(model: str, tmp: Path, timeout: float = 90) -> tuple[subprocess.Popen, Server]:
    """`covidct serve MODEL --port 0` with its temporary folder in `tmp`; returns once /health answers."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "covidct", "serve", model, "--port", "0"], env=env, stderr=subprocess.PIPE, text=True
    )
    port, seen, deadline = None, [], time.time() + timeout
    while port is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited: {''.join(seen)}")
        seen.append(line)
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1)) if found else None
    if port is None:
        proc.kill()
        raise RuntimeError(f"server did not start within {timeout:g} s")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the log pipe drained
    return proc, Server(f"http://127.0.0.1:{port}", proc.pid, tmp)


def run_suite(server: Server, work: Path) -> list[dict]:
    """Every case once, in order: status, detail, memory growth (MB) and peak, disk peak (MB), left behind, health."""
    rows = []
    for what, send in cases(work):
        before = set(server.tmp.rglob("*"))  # torch keeps a cache folder there from start-up: not a request's
        rss = status_kb(server.pid, "VmRSS")
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
        with DiskWatch(server.tmp) as disk:
            status, detail = send(server.url)
        peak = status_kb(server.pid, "VmHWM")
        left = sorted(str(p.relative_to(server.tmp)) for p in set(server.tmp.rglob("*")) - before)
        health = httpx.get(server.url + "/health", timeout=30).status_code
        rows.append(
            {
                "input": what,
                "status": status,
                "detail": detail,
                "growth_mb": (peak - rss) / 1024,
                "peak_rss_mb": peak / 1024,
                "disk_mb": disk.peak / 2**20,
                "left": left,
                "health": health,
            }
        )
    return rows


def archive_at_the_limit(megabytes: int = 95) -> bytes:
    """A ZIP of `megabytes` MiB on the wire (stored random members: nothing to compress), under archive_mb."""
    import zipfile

    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(megabytes):
            zf.writestr(f"IM{i:05d}", rng.integers(0, 255, 1 << 20, dtype=np.uint8).tobytes())
    return buf.getvalue()


def concurrent_uploads(server: Server, n: int = 6) -> dict:
    """`n` archives at the limit sent at once: every answer (a refusal of the archive by name, or 503 with
    Retry-After past the bytes in flight), the server's memory growth and peak, and /health after."""
    from concurrent.futures import ThreadPoolExecutor

    data = archive_at_the_limit()
    rss = status_kb(server.pid, "VmRSS")
    Path(f"/proc/{server.pid}/clear_refs").write_text("5")

    def send(k: int) -> tuple[int, str, str | None]:
        r = httpx.post(server.url + "/api/v1/predict", files=[("file", (f"a{k}.zip", data))], timeout=300)
        return r.status_code, str(r.json().get("detail", "scored"))[:150], r.headers.get("Retry-After")

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(send, range(n)))
    peak = status_kb(server.pid, "VmHWM")
    after = status_kb(server.pid, "VmRSS")
    return {
        "input": f"{n} concurrent ZIPs of {len(data) / 2**20:.0f} MB",
        "answers": answers,
        "growth_mb": (peak - rss) / 1024,
        "peak_rss_mb": peak / 1024,
        "after_mb": after / 1024,
        "health": httpx.get(server.url + "/health", timeout=30).status_code,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| input | answer | resident memory: growth / peak (MB) | temp. disk peak (MB) | left | /health |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        detail = r["detail"].replace("|", "/")[:150]
        lines.append(
            f"| {r['input']} | {r['status']}: {detail} | {r['growth_mb']:.0f} / {r['peak_rss_mb']:.0f} | "
            f"{r['disk_mb']:.1f} | {len(r['left'])} files | {r['health']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run or export folder")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (default: JSON lines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="covidct-abuse-") as root:
        (Path(root) / "server").mkdir()
        (Path(root) / "work").mkdir()
        proc, server = start(args.model, Path(root) / "server")
        try:
            post(server.url, [("file", ("warm.png", png(256, 256)))])  # the first request's one-off allocations
            print(f"idle resident memory after one request: {status_kb(server.pid, 'VmRSS') / 1024:.0f} MB")
            rows = run_suite(server, Path(root) / "work")
            together = concurrent_uploads(server)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(markdown(rows) if args.markdown else "\n".join(json.dumps(r) for r in rows))
    print(json.dumps(together))


if __name__ == "__main__":
    main()

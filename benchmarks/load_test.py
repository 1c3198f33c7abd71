"""Load test of `covidct serve`: N requests at each concurrency C to 127.0.0.1 (loopback only, bounded), reporting
throughput, latency percentiles (p50/p95/p99), errors and the server's resident memory before and after.

Starts the server itself (so it can read its memory from /proc), sends real COVID-CT images when the dataset is
present (synthetic ones otherwise), and prints a Markdown table, one row per concurrency. Usage:
    .venv/bin/python benchmarks/load_test.py MODEL_DIR [--requests 400] [--concurrency 1 8 32] [--cam]
        [--serve-args "--batch-wait-ms 0"]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "covid-ct" / "Images-processed"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def payloads(n: int) -> tuple[list[tuple[str, bytes]], str]:
    files = (
        sorted(REAL.glob("CT_*/*"))[:: max(1, len(list(REAL.glob("CT_*/*"))) // n or 1)][:n] if REAL.is_dir() else []
    )
    if files:
        return [(f.name, f.read_bytes()) for f in files], f"{len(files)} COVID-CT images"
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(buf, format="PNG")
        out.append((f"{i}.png", buf.getvalue()))
    return out, f"{n} synthetic 512x512 PNGs"


async def run(url: str, images: list[tuple[str, bytes]], n: int, concurrency: int, cam: bool) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            name, data = images[i % len(images)]
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/api/v1/predict", params={"cam": cam}, files={"file": (name, data)})
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "throughput": n / wall,
        "errors": errors,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
    }


@contextlib.contextmanager
def served(
    model: str, serve_args: str = "", env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`covidct serve MODEL` on a free loopback port, once /health answers: (its URL, its process); stopped after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "covidct", "serve", model, "--port", str(port), *serve_args.split()]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--requests", type=int, default=400, help="requests per concurrency (at most 5000)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--cam", action="store_true", help="ask for Grad-CAM overlays too")
    p.add_argument("--serve-args", default="", help="more arguments of covidct serve, quoted")
    args = p.parse_args()
    results = []
    with served(args.model, args.serve_args) as (url, server):
        images, source = payloads(64)
        asyncio.run(run(url, images, 32, 4, args.cam))  # warm-up, not counted
        for concurrency in args.concurrency:
            before = rss_mb(server.pid)
            r = asyncio.run(run(url, images, min(args.requests, 5000), concurrency, args.cam))
            results.append((r, before, rss_mb(server.pid)))
        runtime = httpx.get(url + "/api/v1/model").json()["serving"]["runtime"]
    print(
        f"{args.requests} requests per row, {source}, runtime {runtime}, Grad-CAM {'on' if args.cam else 'off'}, "
        f"serve {args.serve_args or '(defaults)'}\n"
    )
    print("| concurrency | images/s | p50 ms | p95 ms | p99 ms | errors | server RSS before / after (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r, before, after in results:
        errors = sum(r["errors"].values())
        print(
            f"| {r['concurrency']} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} "
            f"| {errors} {r['errors'] or ''} | {before:.0f} / {after:.0f} |"
        )


if __name__ == "__main__":
    main()

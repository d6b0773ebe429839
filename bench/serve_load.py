"""Load test of `headstart serve` on loopback: batched vs one request per model call.

For each mode the server runs in its own process on 127.0.0.1 (a free port, never another
interface); N concurrent clients send single-input requests until the request budget or the
time budget is spent; throughput, p50 / p99 latency and the failed requests are reported.
Bounded by design: at most --requests requests and --seconds seconds per mode.

    python bench/serve_load.py MODEL [--images DIR] [--clients 8] [--requests 300] [--seconds 60]

MODEL is a model directory or an ONNX export. Images are read from --images (a folder,
searched recursively) or generated; a text model gets generated sentences.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def payloads(task: str, images: Path | None, n: int = 64) -> list[dict]:
    """Request bodies for httpx: ``files=`` for images, ``json=`` for texts."""
    rng = np.random.default_rng(0)
    if task == "text":
        words = "the a movie plot was really good great bad awful fun boring actors and it this".split()
        return [{"json": {"text": " ".join(rng.choice(words, int(rng.integers(4, 30))))}} for _ in range(n)]
    if images is not None:
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(n, len(files))).astype(int)]
        return [{"files": {"files": (p.name, p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg")}} for p in files]
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
        out.append({"files": {"files": (f"{i}.jpg", buf.getvalue(), "image/jpeg")}})
    return out


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "headstart", "serve", model, "--host", HOST, "--port", str(port), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(client, proc: subprocess.Popen, base: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        try:
            r = await client.get(f"{base}/health")
            if r.status_code == 200:
                return r.json()
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not start in time")


async def run_mode(model: str, extra: list[str], args, images: Path | None) -> dict:
    import httpx

    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_server(model, port, extra)
    try:
        limits = httpx.Limits(max_connections=args.clients + 2)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            health = await wait_ready(client, proc, base)
            bodies = payloads(health["task"], images)
            for body in bodies[:4]:  # warm-up, not counted
                await client.post(f"{base}/predict", **body)
            latencies: list[float] = []
            failures: list[str] = []
            sent = 0
            start = time.perf_counter()
            stop_at = start + args.seconds

            async def worker(w: int) -> None:
                nonlocal sent
                while sent < args.requests and time.perf_counter() < stop_at:
                    body = bodies[sent % len(bodies)]
                    sent += 1
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(f"{base}/predict", **body)
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text[:200]}")
                            continue
                    except Exception as exc:  # noqa: BLE001 - counted, reported
                        failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*[worker(w) for w in range(args.clients)])
            elapsed = time.perf_counter() - start
            after = (await client.get(f"{base}/health")).json()
    finally:
        proc.terminate()  # the server this run started, by its pid
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies) + len(failures), "failed": len(failures), "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        # one-by-one: one model call per request (the warm-up's included, as in the batched count)
        "model_calls": after["batching"]["model_calls"] if after["batching"]["enabled"] else len(latencies) + 4,
        "runtime": health["runtime"], "task": health["task"],
        "first_failures": failures[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory or ONNX export")
    parser.add_argument("--images", type=Path, help="folder of images to send [generated JPEGs]")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients [8]")
    parser.add_argument("--requests", type=int, default=300, help="request budget per mode [300]")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget per mode [60]")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("--requests, --clients and --seconds must be positive")
    modes = {
        "batched": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
        "one-by-one": ["--no-batching"],
    }
    results = {name: asyncio.run(run_mode(args.model, extra, args, args.images)) for name, extra in modes.items()}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{args.model} ({results['batched']['runtime']}, {results['batched']['task']}); {args.clients} clients, "
          f"loopback {HOST}; {platform.processor() or platform.machine()}, {cpus} CPU cores")
    print(f"{'mode':<11} {'requests':>8} {'failed':>6} {'seconds':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'model calls':>11}")
    for name, r in results.items():
        print(f"{name:<11} {r['requests']:>8} {r['failed']:>6} {r['seconds']:>8.2f} {r['throughput_rps']:>7.1f} "
              f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['model_calls']!s:>11}")
        for f in r["first_failures"]:
            print(f"  failure: {f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpus": cpus, "results": results}, indent=2))
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

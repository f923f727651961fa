"""Serving: the container on loopback vs the same model in-process, same thread budget.

* cold start: `docker run IMAGE serve` -> first 200 from /invocations;
* single-image JPEG requests at concurrency 1, 4, 16: p50/p99 latency, requests/s, errors;
* in-process: `Predictor.predict` (decode + preprocess + forward) in a loop, same image, same threads.

Prints a table last and writes JSON (bench/results/serve.json). Needs Docker and the image.

    python bench/serve.py [--image bincounter:local] [--model-dir DIR] [--requests 200] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import torch


def make_model(tmp: Path, image_size: int) -> tuple[Path, bytes]:
    from bincounter.data.split import split_dataset
    from bincounter.data.synth import synth_dataset
    from bincounter.train import TrainConfig, train

    synth_dataset(tmp / "abid", 4, seed=0, size=320)
    split_dataset(tmp / "abid", tmp / "ch", val=0.25, test=0.25)
    train(TrainConfig(train_dir=str(tmp / "ch/train"), val_dir=str(tmp / "ch/val"), model_dir=str(tmp / "model"),
                      epochs=1, image_size=image_size, pretrained=False, workers=0, show_progress=False))
    return tmp / "model", next((tmp / "abid" / "bin-images").iterdir()).read_bytes()


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    r.read()
    return r.status


def load(host: str, port: int, body: bytes, concurrency: int, total: int) -> dict:
    lat, errors, lock = [], 0, threading.Lock()
    per = total // concurrency

    def worker():
        nonlocal errors
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for _ in range(per):
            t0 = time.perf_counter()
            try:
                ok = post(conn, body) == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection(host, port, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                errors += 0 if ok else 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def in_process(model_dir: Path, body: bytes, n: int, threads: int) -> dict:
    from bincounter.evaluate import Predictor

    torch.set_num_threads(threads)
    pred = Predictor(model_dir, device="cpu")
    for _ in range(5):
        pred.predict([body])
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        pred.predict([body])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"p50_ms": 1000 * statistics.median(lat), "rps": n / sum(lat)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default="bincounter:local")
    p.add_argument("--model-dir", type=Path, help="default: train a 1-epoch model on synthetic data")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--requests", type=int, default=192)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench/results/serve.json")
    a = p.parse_args()
    if a.quick:
        a.requests, a.image_size, a.warmup = 32, 64, 8
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, body = (a.model_dir, None) if a.model_dir else make_model(Path(tmp), a.image_size)
        if body is None:
            raise SystemExit("--model-dir needs an image too; leave it out to use synthetic data")
        name = f"bench-serve-{uuid.uuid4().hex[:6]}"
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "-d", "--name", name, "-v", f"{model_dir.resolve()}:/opt/ml/model:ro",
                        a.image, "serve"], check=True, capture_output=True)
        # talk to the container's own address: a `-p` mapping would add docker's userland proxy, which
        # SageMaker does not have
        host = subprocess.run(["docker", "inspect", name, "--format", "{{.NetworkSettings.IPAddress}}"],
                              check=True, capture_output=True, text=True).stdout.strip()
        port = 8080
        try:
            cold = None
            while time.perf_counter() - t0 < 180:
                try:
                    if post(http.client.HTTPConnection(host, port, timeout=5), body) == 200:
                        cold = time.perf_counter() - t0
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            load(host, port, body, 2, a.warmup)  # MMS's JVM compiles its hot paths over the first requests
            rows = [load(host, port, body, c, a.requests) for c in (1, 4, 16)]
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        inproc = in_process(model_dir, body, max(20, a.requests // 4), a.threads)
    best = max(rows, key=lambda r: r["rps"])
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus", "device": "cpu",
           "date": time.strftime("%Y-%m-%d %H:%M"), "args": {k: str(v) for k, v in vars(a).items()},
           "cold_start_s": cold, "container": rows, "in_process": inproc,
           "p50_overhead_ms_c1": rows[0]["p50_ms"] - inproc["p50_ms"],
           "throughput_ratio_best": best["rps"] / inproc["rps"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nserving {a.image_size}px efficientnet_b0 on {out['machine']}, cold start {cold:.1f} s")
    print(f"{'':<14}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    for r in rows:
        print(f"{'conc ' + str(r['concurrency']):<14}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['rps']:>8.1f}"
              f"{r['errors']:>8}")
    print(f"{'in-process':<14}{inproc['p50_ms']:>9.1f}{'':>9}{inproc['rps']:>8.1f}")
    print(f"p50 overhead at concurrency 1: {out['p50_overhead_ms_c1']:.1f} ms; best throughput / in-process: "
          f"{out['throughput_ratio_best']:.2f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

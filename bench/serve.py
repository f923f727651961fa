"""Serving: the container on loopback vs the same model in-process, same thread budget.

* cold start: `docker run IMAGE serve` -> first 200 from /invocations;
* single-image JPEG requests at concurrency 1, 4, 16: p50/p99 latency, requests/s, errors, for each
  server configuration in --configs (MMS batch size : max batch delay in ms; 1:0 = no dynamic batching);
* in-process: the image's own runtime called directly (`predict`: decode + preprocess + forward) inside that
  image with the same threads, on 1 image and on batches of each configured batch size: PyTorch
  (`Predictor`) in the default image, ONNX Runtime (`OnnxPredictor`) in the CPU image;
* p50 overhead at concurrency 1, paired: server requests alternate with in-process predictions and the
  median of the per-pair differences is reported (robust to the slow drifts of a shared machine);
* --images A,B: the same configurations for several images (the default image against the CPU one, or the
  previous front against the current one), all up at once and measured in the same interleaved rounds;
  the image sizes and each image's throughput relative to the first are in the summary.

All containers stay up and the measurements are interleaved in --rounds rounds (medians reported), so
the noise of a shared machine falls on every configuration alike. Prints a table last and writes JSON
(bench/results/serve.json). Needs Docker and the image.

    python bench/serve.py [--image bincounter:local | --images bincounter:local,bincounter:cpu]
                          [--configs 1:0,4:1] [--requests 192] [--quick]
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
    return post_answer(conn, body)[0]


def post_answer(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, str]:
    """(status, the error's message when not 200)."""
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    data = r.read()
    if r.status == 200:
        return 200, ""
    try:
        return r.status, str(json.loads(data).get("error", ""))[:80]
    except (ValueError, AttributeError):
        return r.status, data[:80].decode("utf-8", "replace")


def load(host: str, port: int, body: bytes, concurrency: int, total: int) -> dict:
    lat, kinds, lock = [], {}, threading.Lock()
    per = total // concurrency

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for _ in range(per):
            t0 = time.perf_counter()
            try:
                status, why = post_answer(conn, body)
                kind = None if status == 200 else f"{status} {why}"
            except OSError as e:
                kind = type(e).__name__
                conn = http.client.HTTPConnection(host, port, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if kind:
                    kinds[kind] = kinds.get(kind, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"concurrency": concurrency, "requests": len(lat), "errors": sum(kinds.values()), "error_kinds": kinds,
            "rps": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


IN_PROCESS = """
import json, sys, time
from bincounter.serving.onnx_runtime import OnnxPredictor, runtime_name, session_threads
from bincounter.serving.server import default_workers
threads = int(sys.argv[1])
if runtime_name() == "onnx":  # the CPU image: the threads one of its workers has (one worker per core)
    threads = session_threads(default_workers(0, "onnx"))
    pred = OnnxPredictor("/opt/ml/model", threads=threads)
else:
    import torch
    from bincounter.evaluate import Predictor
    torch.set_num_threads(threads)
    pred = Predictor("/opt/ml/model", device="auto")  # the GPU when the container has one (--gpus)
print(pred.runtime, threads, flush=True)
body = open("/bench/image.jpg", "rb").read()
for _ in range(5):
    pred.predict([body])
print("ready", flush=True)
for line in sys.stdin:  # "BATCH N": N timed predictions of BATCH images -> their latencies in s
    bs, n = map(int, line.split())
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        pred.predict([body] * bs)
        lat.append(time.perf_counter() - t0)
    print(json.dumps(lat), flush=True)
"""


class InProcess:
    """The runtime's predict inside the image itself (a container of its own, the same libraries as the
    server), kept running so single predictions can alternate with server requests."""

    def __init__(self, name: str, threads: int):
        self.proc = subprocess.Popen(["docker", "exec", "-i", name, "/opt/venv/bin/python", "-c", IN_PROCESS,
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.runtime, self.threads = self.proc.stdout.readline().split()
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the in-process reference did not start")

    def run(self, batch: int, n: int) -> list[float]:
        self.proc.stdin.write(f"{batch} {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def paired_c1(host: str, body: bytes, inproc: InProcess, n: int) -> list[float]:
    """Concurrency 1, alternating one request to the server with one in-process prediction: per pair, the
    server's latency minus the in-process one (ms). Slow phases of a shared machine hit both sides of a
    pair, so the median difference is the serving overhead, much steadier than a difference of medians."""
    conn = http.client.HTTPConnection(host, 8080, timeout=60)
    diffs = []
    for _ in range(n):
        t0 = time.perf_counter()
        if post(conn, body) != 200:
            continue
        server = time.perf_counter() - t0
        diffs.append(1000 * (server - inproc.run(1, 1)[0]))
    return diffs


def start_server(image: str, model_dir: Path, body: bytes, batch: int, delay_ms: int, names: list,
                 gpu_args: list[str]) -> dict:
    """`docker run ... serve` with one batching configuration; returns its address and cold start."""
    name = f"bench-serve-{uuid.uuid4().hex[:6]}"
    names.append(name)
    t0 = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--name", name, *gpu_args,
                    "-v", f"{model_dir.resolve()}:/opt/ml/model:ro", "-e", f"BINCOUNTER_BATCH_SIZE={batch}",
                    "-e", f"BINCOUNTER_MAX_BATCH_DELAY_MS={delay_ms}",
                    image, "serve"], check=True, capture_output=True)
    # talk to the container's own address: a `-p` mapping would add docker's userland proxy, which
    # SageMaker does not have
    host = subprocess.run(["docker", "inspect", name, "--format", "{{.NetworkSettings.IPAddress}}"],
                          check=True, capture_output=True, text=True).stdout.strip()
    while time.perf_counter() - t0 < 180:
        try:
            if post(http.client.HTTPConnection(host, 8080, timeout=5), body) == 200:
                return {"image": image, "batch_size": batch, "max_batch_delay_ms": delay_ms, "host": host,
                        "container": name, "cold_start_s": time.perf_counter() - t0}
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the container never answered; docker logs {name}")


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """Per concurrency: the median of each figure over the rounds; errors summed."""
    out = []
    for per_c in zip(*rounds, strict=True):
        row = {"concurrency": per_c[0]["concurrency"], "requests": sum(r["requests"] for r in per_c),
               "errors": sum(r["errors"] for r in per_c), "error_kinds": {}}
        for r in per_c:
            for k, v in r["error_kinds"].items():
                row["error_kinds"][k] = row["error_kinds"].get(k, 0) + v
        for k in ("p50_ms", "p99_ms", "rps"):
            row[k] = statistics.median(r[k] for r in per_c)
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default="bincounter:local")
    p.add_argument("--images", help="several images to compare, comma-separated (the first also runs the "
                                    "in-process reference); default: --image")
    p.add_argument("--model-dir", type=Path, help="default: train a 1-epoch model on synthetic data")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--requests", type=int, default=192)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench/results/serve.json")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (medians)")
    p.add_argument("--gpus", action="store_true", help="give every container the GPUs (docker run --gpus all)")
    p.add_argument("--configs", default="1:0,4:1",
                   help="server configurations to compare, BATCH_SIZE:MAX_BATCH_DELAY_MS, comma-separated")
    a = p.parse_args()
    if a.quick:
        a.requests, a.image_size, a.warmup, a.configs, a.rounds = 32, 64, 8, "1:0,4:1", 1
    configs = [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]
    images = a.images.split(",") if a.images else [a.image]
    batches = sorted({1} | {b for b, _ in configs})
    names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, body = make_model(Path(tmp), a.image_size) if not a.model_dir else (a.model_dir, None)
        if body is None:
            raise SystemExit("--model-dir needs an image too; leave it out to use synthetic data")
        body_file = Path(tmp) / "bench-image" / "image.jpg"
        body_file.parent.mkdir()
        body_file.write_bytes(body)
        try:
            # all servers stay up (idle ones cost next to nothing) and the measurements are interleaved in
            # rounds, so a noisy minute on a shared machine hits every configuration alike
            gpu_args = ["--gpus", "all"] if a.gpus else []
            runs = [start_server(img, model_dir, body, b, d, names, gpu_args) for img in images for b, d in configs]
            references = {}
            for img in images:
                inproc_name = f"bench-inproc-{uuid.uuid4().hex[:6]}"
                names.append(inproc_name)
                subprocess.run(["docker", "run", "-d", "--name", inproc_name, *gpu_args, "--entrypoint", "sleep",
                                "-v", f"{model_dir.resolve()}:/opt/ml/model:ro", "-v",
                                f"{body_file.parent}:/bench:ro", img, "infinity"], check=True, capture_output=True)
                references[img] = InProcess(inproc_name, a.threads)
            for run in runs:
                load(run["host"], 8080, body, 2, a.warmup)  # the JVM compiles its hot paths on these
            per_round, diffs = [[] for _ in runs], [[] for _ in runs]
            inproc_lat = {img: {bs: [] for bs in batches} for img in images}
            n = a.requests // a.rounds
            for r in range(a.rounds):
                print(f"round {r + 1}/{a.rounds}", flush=True)
                for i, run in enumerate(runs):
                    diffs[i] += paired_c1(run["host"], body, references[run["image"]], n)
                    per_round[i].append([load(run["host"], 8080, body, c, n) for c in (1, 4, 16)])
                for img in images:
                    for bs in batches:
                        inproc_lat[img][bs] += references[img].run(bs, max(4, n // bs))
            runtimes = {img: ref.runtime for img, ref in references.items()}
            references_threads = {img: ref.threads for img, ref in references.items()}
            for ref in references.values():
                ref.close()
            for i, run in enumerate(runs):  # the server's own account of any error, before it is removed
                if any(r["errors"] for rows in per_round[i] for r in rows):
                    logs = subprocess.run(["docker", "logs", "--tail", "60", run["container"]], capture_output=True,
                                          text=True)
                    run["log_tail"] = (logs.stdout + logs.stderr)[-6000:]
        finally:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    for run, rows in zip(runs, per_round, strict=True):
        run["rows"] = median_rows(rows)
        del run["host"], run["container"]
    inproc = {img: {bs: {"p50_ms": 1000 * statistics.median(lat), "rps": bs * len(lat) / sum(lat)}
                    for bs, lat in per_bs.items()} for img, per_bs in inproc_lat.items()}
    sizes = {img: int(subprocess.run(["docker", "image", "inspect", img, "--format", "{{.Size}}"], check=True,
                                     capture_output=True, text=True).stdout) for img in images}
    best_rps = {}
    for run, d in zip(runs, diffs, strict=True):
        best = max(run["rows"], key=lambda r: r["rps"])
        ref = inproc[run["image"]]
        run["runtime"] = runtimes[run["image"]]
        run["image_size_mb"] = sizes[run["image"]] / 1e6
        run["p50_overhead_ms_c1"] = statistics.median(d)
        run["overhead_pairs"] = len(d)
        run["best_rps_over_in_process_b1"] = best["rps"] / ref[1]["rps"]
        run["best_rps_over_in_process_best_batch"] = best["rps"] / max(v["rps"] for v in ref.values())
        best_rps[run["image"]] = max(best_rps.get(run["image"], 0), best["rps"])
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "device": "gpu (--gpus all)" if a.gpus else "cpu",
           "date": time.strftime("%Y-%m-%d %H:%M"), "args": {k: str(v) for k, v in vars(a).items()},
           "containers": runs, "cpus_per_container": a.threads,
           "in_process": {img: {str(k): v for k, v in per.items()} for img, per in inproc.items()},
           "in_process_threads": references_threads,
           "best_rps_over_first_image": {img: v / best_rps[images[0]] for img, v in best_rps.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nserving {a.image_size}px on {out['machine']}, {a.threads} runtime threads")
    def label(run) -> str:
        where = f"{run['image']} " if len(images) > 1 else ""
        return f"{where}batch {run['batch_size']}/{run['max_batch_delay_ms']}ms"

    width = max(26, max(len(label(run)) for run in runs) + 10)
    print(f"{'':<{width}}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    for run in runs:
        for r in run["rows"]:
            print(f"{label(run) + ', conc ' + str(r['concurrency']):<{width}}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{r['rps']:>8.1f}{r['errors']:>8}")
    for img, per in inproc.items():
        for bs, v in per.items():
            what = f"in-process {runtimes[img]} ({references_threads[img]} thr), {bs} image(s)"
            print(f"{what:<{width}}{v['p50_ms']:>9.1f}{'':>9}{v['rps']:>8.1f}")
    for run in runs:
        for r in run["rows"]:
            if r["errors"]:
                print(f"{label(run)}, conc {r['concurrency']}: errors {r['error_kinds']}")
        if "log_tail" in run:
            print(f"--- {label(run)}: the server's log, last lines\n{run['log_tail']}")
    for run in runs:
        print(f"{label(run)} ({run['runtime']}, {run['image_size_mb'] / 1000:.2f} GB): "
              f"cold start {run['cold_start_s']:.1f} s, "
              f"p50 overhead at concurrency 1 (paired) {run['p50_overhead_ms_c1']:.1f} ms, best throughput / "
              f"in-process 1 image {run['best_rps_over_in_process_b1']:.2f}, / in-process best batch "
              f"{run['best_rps_over_in_process_best_batch']:.2f}")
    if len(images) > 1:
        for img in images[1:]:
            print(f"best req/s of {img} / {images[0]}: {out['best_rps_over_first_image'][img]:.2f} "
                  f"({a.threads} CPUs each)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

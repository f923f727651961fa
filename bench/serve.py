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
  the image sizes and each image's throughput relative to the first are in the summary;
* --precisions fp32,int8: an ONNX Runtime image (the CPU one) serves each precision in a container of its own
  (BINCOUNTER_ONNX_PRECISION), the synthetic model quantized first (`export --quantize int8`, forced servable:
  a 1-epoch model's accuracy says nothing);
* the in-process limit: as many in-process callers as the server has workers, each with a worker's threads,
  all predicting batches at once (the CPU image: one single-threaded session per core); "served / limit" is
  the server's req/s at concurrency 16 over that limit at the configuration's batch size (issue 25's 0.85 goal);
* --server-cpus 1: the servers and the in-process references on those CPUs only (docker --cpuset-cpus), this
  load generator on the others, so the client's own cycles do not count against the server (without it the
  client shares every core with the server and served / limit understates the serving path).

All containers stay up and the measurements are interleaved in --rounds rounds (medians reported), so
the noise of a shared machine falls on every configuration alike. Prints a table last and writes JSON
(bench/results/serve.json). Needs Docker and the image.

    python bench/serve.py [--image bincounter:local | --images bincounter:local,bincounter:cpu]
                          [--precisions fp32,int8] [--configs 1:0,4:1] [--requests 192] [--quick]
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


def make_model(tmp: Path, image_size: int, int8: bool = False) -> tuple[Path, bytes]:
    from bincounter.data.split import split_dataset
    from bincounter.data.synth import synth_dataset
    from bincounter.train import TrainConfig, train

    synth_dataset(tmp / "abid", 4, seed=0, size=320)
    split_dataset(tmp / "abid", tmp / "ch", val=0.25, test=0.25)
    train(TrainConfig(train_dir=str(tmp / "ch/train"), val_dir=str(tmp / "ch/val"), model_dir=str(tmp / "model"),
                      epochs=1, image_size=image_size, pretrained=False, workers=0, show_progress=False))
    if int8:
        from bincounter.quantize import quantize_int8

        quantize_int8(tmp / "model", tmp / "ch/val", force_servable=True)
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
threads, workers = int(sys.argv[1]), 1
if runtime_name() == "onnx":  # the CPU image: the threads one of its workers has (one worker per core)
    workers = default_workers(0, "onnx")
    threads = session_threads(workers)
    pred = OnnxPredictor("/opt/ml/model", threads=threads)  # the precision: BINCOUNTER_ONNX_PRECISION
else:
    import torch
    from bincounter.evaluate import Predictor
    torch.set_num_threads(threads)
    pred = Predictor("/opt/ml/model", device="auto")  # the GPU when the container has one (--gpus)
print(pred.runtime, threads, workers, getattr(pred, "model_file", "-"), flush=True)
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
        self.runtime, self.threads, workers, self.model_file = self.proc.stdout.readline().split()
        self.workers = int(workers)  # how many such callers the server runs side by side
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the in-process reference did not start")

    def run(self, batch: int, n: int) -> list[float]:
        self.proc.stdin.write(f"{batch} {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def parallel_rps(refs: list[InProcess], batch: int, n: int) -> float:
    """Images/s of all `refs` predicting `n` batches of `batch` images each, at once (the in-process limit)."""
    threads = [threading.Thread(target=ref.run, args=(batch, n)) for ref in refs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(refs) * batch * n / (time.perf_counter() - t0)


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


def precision_env(precision: str | None) -> list[str]:
    return ["-e", f"BINCOUNTER_ONNX_PRECISION={precision}"] if precision else []


def serves_onnx(image: str) -> bool:
    """The CPU image (ONNX Runtime) says so in its environment (BINCOUNTER_RUNTIME=onnx)."""
    got = subprocess.run(["docker", "image", "inspect", image, "--format", "{{json .Config.Env}}"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        raise SystemExit(f"{image}: not a local image (docker pull it, or build it: make image / make image-cpu)")
    return "BINCOUNTER_RUNTIME=onnx" in (json.loads(got.stdout or "null") or [])


def cpu_set(text: str) -> set[int]:
    """docker's --cpuset-cpus syntax ("1", "0,2", "2-3") -> the CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
            raise SystemExit(f"--server-cpus {text}: expected CPU numbers like 1, 0,2 or 2-3")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def split_cpus(server: str | None, mine: set[int]) -> tuple[list[str], set[int]]:
    """(the docker run arguments that keep a container on the server's CPUs, the CPUs left to this client)."""
    if not server:
        return [], mine
    wanted = cpu_set(server)
    if not wanted <= mine:
        raise SystemExit(f"--server-cpus {server}: this process may use CPUs {sorted(mine)} only")
    if not mine - wanted:
        raise SystemExit(f"--server-cpus {server}: leaves no CPU for the load generator (CPUs {sorted(mine)})")
    return ["--cpuset-cpus", ",".join(map(str, sorted(wanted)))], mine - wanted


def start_server(variant: dict, model_dir: Path, body: bytes, batch: int, delay_ms: int, names: list,
                 gpu_args: list[str]) -> dict:
    """`docker run ... serve` with one batching configuration; returns its address and cold start."""
    image = variant["image"]
    name = f"bench-serve-{uuid.uuid4().hex[:6]}"
    names.append(name)
    t0 = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--name", name, *gpu_args,
                    "-v", f"{model_dir.resolve()}:/opt/ml/model:ro", "-e", f"BINCOUNTER_BATCH_SIZE={batch}",
                    "-e", f"BINCOUNTER_MAX_BATCH_DELAY_MS={delay_ms}", *precision_env(variant["precision"]),
                    image, "serve"], check=True, capture_output=True)
    # talk to the container's own address: a `-p` mapping would add docker's userland proxy, which
    # SageMaker does not have
    host = subprocess.run(["docker", "inspect", name, "--format", "{{.NetworkSettings.IPAddress}}"],
                          check=True, capture_output=True, text=True).stdout.strip()
    while time.perf_counter() - t0 < 180:
        try:
            if post(http.client.HTTPConnection(host, 8080, timeout=5), body) == 200:
                return {"image": image, "variant": variant["label"], "precision": variant["precision"],
                        "batch_size": batch, "max_batch_delay_ms": delay_ms, "host": host,
                        "container": name, "cold_start_s": time.perf_counter() - t0}
        except OSError:
            pass
        time.sleep(0.2)
    logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True)
    raise SystemExit(f"{image} ({variant['label']}) never answered within 180 s; its last log lines:\n"
                     f"{(logs.stdout + logs.stderr)[-4000:]}")


#: words of a server log line that tell why requests failed, strongest first
ERROR_WORDS = (("died", "traceback", "exception", "killed", "signal"), ("error", "warn", "memory"))


def error_lines(log: str, context: int = 2, limit: int = 6000) -> str:
    """The lines of a server's log around those that name a failure (a request-per-line log buries a worker's
    death under thousands of lines after it): the strongest words found, else the weaker, else the last lines."""
    lines = log.splitlines()
    hits = []
    for words in ERROR_WORDS:
        hits = hits or [i for i, line in enumerate(lines) if any(w in line.lower() for w in words)]
    if not hits:
        return "\n".join(lines[-60:])[-limit:]
    keep = sorted({j for i in hits for j in range(max(0, i - context), min(len(lines), i + context + 1))})
    return "\n".join(lines[j] for j in keep)[:limit]


def parse_mem_usage(text: str) -> float | None:
    """`docker stats`' MemUsage ("45.3MiB / 1.9GiB") -> the used part in MiB; None when it is not that."""
    got = text.split("/")[0].strip()
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "kB": 1000 / 2**20, "MiB": 1, "MB": 1e6 / 2**20, "GiB": 1024,
             "GB": 1e9 / 2**20}
    for unit in sorted(units, key=len, reverse=True):
        if got.endswith(unit):
            try:
                return float(got[:-len(unit)]) * units[unit]
            except ValueError:
                return None
    return None


def container_memory_mib(name: str) -> float | None:
    """The memory a running container uses, in MiB (None if docker cannot say)."""
    return parse_mem_usage(subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                                          capture_output=True, text=True).stdout)


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


def variants_of(images: list[str], precisions: list[str]) -> list[dict]:
    """(image, precision) pairs measured: each precision for an ONNX Runtime image, the image alone otherwise."""
    if len(set(images)) != len(images) or len(set(precisions)) != len(precisions):
        raise SystemExit("--images / --precisions: each at most once (the results are keyed by image and precision)")
    out = []
    for img in images:
        onnx = serves_onnx(img)
        for prec in (precisions if onnx else [None]):
            label = f"{img} {prec}" if onnx and precisions != ["auto"] else img
            out.append({"image": img, "precision": prec if onnx and prec != "auto" else None, "label": label})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default="bincounter:local", help="the image to measure (default: %(default)s)")
    p.add_argument("--images", help="several images to compare, comma-separated (each also runs the in-process "
                                    "reference); replaces --image")
    p.add_argument("--precisions", default="fp32",
                   help="for an ONNX Runtime image (the CPU one): fp32, int8 or auto (what config.json marks), "
                        "comma-separated, each served and measured in-process; ignored for the PyTorch image "
                        "(default: %(default)s)")
    p.add_argument("--model-dir", type=Path, help="a model directory (with model.int8.onnx marked servable for "
                                                  "int8); default: train a 1-epoch model on synthetic data")
    p.add_argument("--image-size", type=int, default=224, help="of the synthetic model (default: %(default)s)")
    p.add_argument("--requests", type=int, default=192,
                   help="requests per concurrency level, spread over the rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="the PyTorch in-process reference's threads (default: this machine's CPUs, "
                        "%(default)s); the containers are not CPU-limited")
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 64 px, 32 requests, 8 warm-up, 1 round "
                                                        "(overrides those four flags; --configs is kept)")
    p.add_argument("--out", default="bench/results/serve.json", help="the JSON (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (medians)")
    p.add_argument("--gpus", action="store_true", help="give every container the GPUs (docker run --gpus all)")
    p.add_argument("--configs", help="server configurations to compare, BATCH_SIZE:MAX_BATCH_DELAY_MS, "
                                     "comma-separated (default 1:0,4:1)")
    p.add_argument("--server-cpus", help="the CPUs of the servers and the in-process references (docker "
                                         "--cpuset-cpus syntax, e.g. 1); this load generator runs on the others "
                                         "(default: everyone on every CPU)")
    a = p.parse_args()
    all_cpus = set(os.sched_getaffinity(0))
    cpuset_args, client_cpus = split_cpus(a.server_cpus, all_cpus)
    if a.server_cpus:
        os.sched_setaffinity(0, client_cpus)  # this process and the threads it starts from now on
    a.configs = a.configs or "1:0,4:1"
    if a.quick:  # a smoke run: tiny images, few requests, one round (the configurations as given)
        a.requests, a.image_size, a.warmup, a.rounds = 32, 64, 8, 1
    precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - {"fp32", "int8", "auto"}:
        raise SystemExit(f"--precisions {a.precisions}: expected fp32, int8 or auto, comma-separated")
    configs = [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]
    images = a.images.split(",") if a.images else [a.image]
    variants = variants_of(images, precisions)
    labels = [v["label"] for v in variants]
    batches = sorted({1} | {b for b, _ in configs})
    names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        want_int8 = any(v["precision"] == "int8" for v in variants)
        if a.model_dir:
            if want_int8:  # the server's own gate, here rather than as a container that never answers
                from bincounter.errors import UserError
                from bincounter.serving.onnx_runtime import served_onnx

                try:
                    served_onnx(a.model_dir, "int8")
                except UserError as e:
                    raise SystemExit(f"--precisions int8: {e}") from None
            from bincounter.data.synth import synth_dataset

            synth_dataset(Path(tmp) / "abid", 1, seed=0, size=320)  # one request body: a synthetic bin photo
            model_dir, body = a.model_dir, next((Path(tmp) / "abid" / "bin-images").iterdir()).read_bytes()
        else:
            model_dir, body = make_model(Path(tmp), a.image_size, int8=want_int8)
        body_file = Path(tmp) / "bench-image" / "image.jpg"
        body_file.parent.mkdir()
        body_file.write_bytes(body)
        try:
            # all servers stay up (idle ones cost next to nothing) and the measurements are interleaved in
            # rounds, so a noisy minute on a shared machine hits every configuration alike
            gpu_args = (["--gpus", "all"] if a.gpus else []) + cpuset_args
            runs = [start_server(v, model_dir, body, b, d, names, gpu_args) for v in variants for b, d in configs]
            references = {}  # label -> one in-process caller per server worker, in a container of its own
            for v in variants:
                inproc_name = f"bench-inproc-{uuid.uuid4().hex[:6]}"
                names.append(inproc_name)
                subprocess.run(["docker", "run", "-d", "--name", inproc_name, *gpu_args, "--entrypoint", "sleep",
                                *precision_env(v["precision"]),
                                "-v", f"{model_dir.resolve()}:/opt/ml/model:ro", "-v",
                                f"{body_file.parent}:/bench:ro", v["image"], "infinity"], check=True,
                               capture_output=True)
                first = InProcess(inproc_name, a.threads)
                references[v["label"]] = [first] + [InProcess(inproc_name, a.threads)
                                                    for _ in range(first.workers - 1)]
            for run in runs:
                load(run["host"], 8080, body, 2, a.warmup)  # the JVM compiles its hot paths on these
            per_round, diffs = [[] for _ in runs], [[] for _ in runs]
            inproc_lat = {label: {bs: [] for bs in batches} for label in labels}
            limit_rps = {label: {bs: [] for bs in batches} for label in labels}
            n = a.requests // a.rounds
            for r in range(a.rounds):
                print(f"round {r + 1}/{a.rounds}", flush=True)
                for i, run in enumerate(runs):
                    diffs[i] += paired_c1(run["host"], body, references[run["variant"]][0], n)
                    per_round[i].append([load(run["host"], 8080, body, c, n) for c in (1, 4, 16)])
                for label in labels:
                    for bs in batches:
                        inproc_lat[label][bs] += references[label][0].run(bs, max(4, n // bs))
                        limit_rps[label][bs].append(parallel_rps(references[label], bs, max(4, n // bs)))
            ref_info = {label: {"runtime": refs[0].runtime, "threads": refs[0].threads, "callers": len(refs),
                                "model_file": refs[0].model_file} for label, refs in references.items()}
            for refs in references.values():
                for ref in refs:
                    ref.close()
            for run in runs:  # the whole container's memory after the load (front + MMS + workers), for sizing
                run["memory_mib"] = container_memory_mib(run["container"])
            for i, run in enumerate(runs):  # the server's own account of any error, before it is removed
                if any(r["errors"] for rows in per_round[i] for r in rows):
                    logs = subprocess.run(["docker", "logs", run["container"]], capture_output=True, text=True)
                    run["log_tail"] = error_lines(logs.stdout + logs.stderr)
        finally:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    for run, rows in zip(runs, per_round, strict=True):
        run["rows"] = median_rows(rows)
        del run["host"], run["container"]
    inproc = {label: {bs: {"p50_ms": 1000 * statistics.median(lat), "rps": bs * len(lat) / sum(lat),
                           "limit_rps": statistics.median(limit_rps[label][bs])}
                      for bs, lat in per_bs.items()} for label, per_bs in inproc_lat.items()}
    sizes = {img: int(subprocess.run(["docker", "image", "inspect", img, "--format", "{{.Size}}"], check=True,
                                     capture_output=True, text=True).stdout) for img in images}
    best_rps = {}
    for run, d in zip(runs, diffs, strict=True):
        best = max(run["rows"], key=lambda r: r["rps"])
        c16 = next(r for r in run["rows"] if r["concurrency"] == 16)
        ref = inproc[run["variant"]]
        run["runtime"] = ref_info[run["variant"]]["runtime"]
        run["model_file"] = ref_info[run["variant"]]["model_file"]
        run["image_size_mb"] = sizes[run["image"]] / 1e6
        run["p50_overhead_ms_c1"] = statistics.median(d)
        run["overhead_pairs"] = len(d)
        run["best_rps_over_in_process_b1"] = best["rps"] / ref[1]["rps"]
        run["best_rps_over_in_process_best_batch"] = best["rps"] / max(v["rps"] for v in ref.values())
        run["c16_rps_over_in_process_limit"] = c16["rps"] / ref[run["batch_size"]]["limit_rps"]
        best_rps[run["variant"]] = max(best_rps.get(run["variant"], 0), best["rps"])
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "device": "gpu (--gpus all)" if a.gpus else "cpu",
           "date": time.strftime("%Y-%m-%d %H:%M"), "args": {k: str(v) for k, v in vars(a).items()},
           "containers": runs, "cpus_per_container": a.threads, "request_bytes": len(body),
           # what every container may use: the vCPUs behind its req/s (all of the host's unless --server-cpus)
           "host_cpus": len(all_cpus),
           "server_cpus": sorted(cpu_set(a.server_cpus)) if a.server_cpus else None,
           "client_cpus": sorted(client_cpus),
           "in_process": {label: {str(k): v for k, v in per.items()} for label, per in inproc.items()},
           "in_process_callers": ref_info,
           "best_rps_over_first": {label: v / best_rps[labels[0]] for label, v in best_rps.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nserving {a.image_size}px on {out['machine']}, {a.threads} runtime threads")

    def label(run) -> str:
        where = f"{run['variant']} " if len(labels) > 1 else ""
        return f"{where}batch {run['batch_size']}/{run['max_batch_delay_ms']}ms"

    width = max(30, max(len(label(run)) for run in runs) + 10, max(len(x) for x in labels) + 40)
    print(f"{'':<{width}}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    for run in runs:
        for r in run["rows"]:
            print(f"{label(run) + ', conc ' + str(r['concurrency']):<{width}}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{r['rps']:>8.1f}{r['errors']:>8}")
    for lab, per in inproc.items():
        info = ref_info[lab]
        where = f"{lab} " if len(labels) > 1 else ""
        for bs, v in per.items():
            what = f"{where}in-process {info['runtime']} ({info['threads']} thr), {bs} image(s)"
            print(f"{what:<{width}}{v['p50_ms']:>9.1f}{'':>9}{v['rps']:>8.1f}")
        for bs, v in per.items():
            what = f"{where}in-process limit ({info['callers']} x {info['threads']} thr), batch {bs}"
            print(f"{what:<{width}}{'':>9}{'':>9}{v['limit_rps']:>8.1f}")
    for run in runs:
        for r in run["rows"]:
            if r["errors"]:
                print(f"{label(run)}, conc {r['concurrency']}: errors {r['error_kinds']}")
        if "log_tail" in run:
            print(f"--- {label(run)}: the server's log, the lines around errors (else the last ones)\n"
                  f"{run['log_tail']}")
    for run in runs:
        print(f"{label(run)} ({run['runtime']} {run['model_file']}, {run['image_size_mb'] / 1000:.2f} GB): "
              f"cold start {run['cold_start_s']:.1f} s, "
              f"p50 overhead at concurrency 1 (paired) {run['p50_overhead_ms_c1']:.1f} ms, "
              f"served at concurrency 16 / in-process limit {run['c16_rps_over_in_process_limit']:.2f}, "
              f"memory {'n/a' if run['memory_mib'] is None else format(run['memory_mib'], '.0f') + ' MiB'}")
    if len(labels) > 1:
        for lab in labels[1:]:
            print(f"best req/s of {lab} / {labels[0]}: {out['best_rps_over_first'][lab]:.2f} "
                  f"({a.threads} CPUs each)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""What 535k bins cost through `sm pipeline`: each step's per-bin rate measured on this machine with the step's own
code on synthetic bins laid out like ABID (JPEGs at ABID's size), then projected to all of ABID on the pipeline's
default instance types and counts (PipelineSpec) with the price table.

Measured, in order, as the pipeline runs them:
  Prepare   `process plan` on the metadata (its marginal rate: its fixed start-up is paid once);
  Shard     `process shard` from S3: the bins in moto (server mode) behind bench/s3_latency.py's proxy, which
            delays every request by --latency-ms (S3's first-byte latency), fetched with the step's parallel,
            retried fetch at its --workers default; the fetch is timed inside the run (each part's TransferReport)
            and the fetching process's CPU time counted; then again at 0 ms (what the code itself costs);
  Index     `process index` -> index.json per split (not in the table: seconds);
  Train     the real trainer (`bincounter.train.train`), one epoch of the Shard step's train shards at the trainer's
            default arch, image size and batch, on this CPU: the steps after the first two timed (wall and the
            process's CPU time, marked through the epoch loop's on_step hook);
  Evaluate  `process evaluate` of the trained model on the test and train shards (its marginal img/s).
Not measurable here (no GPU, no internet), named with the table: the GPU's training rate (docs/PERFORMANCE.md's
A10G estimate) and File mode's copy of the 535k metadata objects.

    python bench/pipeline_cost.py [--bins 400] [--size 500] [--latency-ms 30] [--quick] [--out PATH]

Prints the rates, the table last, and writes JSON (bench/results/pipeline_cost.json; --quick, a smoke run of the
code: bench/results/pipeline_cost-quick.json, its table marked as such).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the trainer logs no run from a benchmark

ABID_BINS = 535_234
BUCKET = "aft-vbi-pds"
METADATA_COPY_S = 900  # File mode copying 535k small metadata objects (~0.7 GB) before plan starts, assumed
GPU_IMG_S = (700, 1100)  # one A10G (ml.g5.xlarge), 224 px bf16: PERFORMANCE.md's model, bound by 4 vCPU decode
WARMUP_STEPS = 2  # training steps left out of the CPU rate
DDP_EFFICIENCY = 0.85  # 2 instances: PERFORMANCE.md's scaling model (1.7-1.9x one)


def measure_plan(raw: Path, work: Path, bins: int) -> dict:
    """`process plan`'s marginal bins/s: its fixed cost (imports, plots) dominates small runs."""
    from bincounter.data.synth import synth_dataset
    from bincounter.sagemaker import processing

    processing.plan(raw, work / "plan-warm")  # warm: imports, font cache
    t = time.perf_counter()
    processing.plan(raw, work / "plan")
    plan_s = time.perf_counter() - t
    big = work / "big"
    synth_dataset(big, per_class=4 * bins // 5, seed=1, size=32)  # plan reads no image
    t = time.perf_counter()
    processing.plan(big, work / "plan-big")
    big_s = time.perf_counter() - t
    # the marginal rate; on a busy machine the difference can vanish in noise: then the whole run's rate
    rate = 3 * bins / (big_s - plan_s) if big_s > 1.5 * plan_s else 4 * bins / big_s
    return {"plan_bins_s": rate, "plan_fixed_s": plan_s}


@contextlib.contextmanager
def timed_fetches(calls: list):
    """Every s3.fetch call the step makes (one per manifest part and pass) -> (seconds, CPU seconds of this
    process, files) appended to `calls`: the real fetch runs, only timed."""
    from bincounter.data import s3

    real = s3.fetch

    def fetch(*a, **kw):
        cpu = time.process_time()
        report = real(*a, **kw)
        calls.append((report.seconds, time.process_time() - cpu, report.done))
        return report

    s3.fetch = fetch
    try:
        yield
    finally:
        s3.fetch = real


def measure_shard(raw: Path, plan: Path, out: Path, latency_ms: float, bins: int) -> dict:
    """`process shard` of every manifest part from S3 (moto behind the latency proxy), at the CLI's --workers."""
    from s3_latency import s3_with_latency

    from bincounter.data import s3
    from bincounter.data.shards import parse_size
    from bincounter.sagemaker import processing

    workers = inspect.signature(processing.shard).parameters["workers"].default  # `process shard --workers`'s too
    with s3_with_latency(latency_ms / 1000) as (moto, proxy):
        seed = s3.s3_client(moto, max_pool=16)
        seed.create_bucket(Bucket=BUCKET)
        files = [f for sub in ("metadata", "bin-images") for f in sorted((raw / sub).iterdir())]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: seed.upload_file(str(f), BUCKET, f"{f.parent.name}/{f.name}"), files))
        calls: list = []
        out.mkdir(parents=True)
        with timed_fetches(calls):
            t = time.perf_counter()
            got = processing.shard(plan / "parts", f"s3://{BUCKET}", out / "shard", parse_size("256MB"),
                                   workers=workers, endpoint_url=proxy, manifest=plan / "manifest")
            total_s = time.perf_counter() - t
    fetch_s, cpu_s, n_files = (sum(c[i] for c in calls) for i in range(3))
    if n_files != 2 * bins or sum(got["skips"].values()):
        raise SystemExit(f"shard at {latency_ms:g} ms: {n_files} of {2 * bins} files, skips {got['skips']}")
    return {"latency_ms": latency_ms, "workers": workers, "fetch_bins_s": bins / fetch_s,
            "fetch_cpu_ms_per_bin": 1000 * cpu_s / bins, "pack_bins_s": bins / (total_s - fetch_s),
            "shard_bins_s": bins / total_s,
            # what would bound the fetch on an instance, where S3's side costs none of its CPU: the client's CPU
            # (one process: at most one core's worth under the GIL) and the GETs in flight over the latency
            "client_cpu_bound_bins_s": bins / cpu_s,
            "latency_bound_bins_s": workers / (2 * latency_ms / 1000) if latency_ms else None}


def measure_train(plan: Path, shard: Path, work: Path, arch: str, image_size: int, batch: int) -> dict:
    """Index, then the real trainer on the train shards (CPU), then `process evaluate` on test and train."""
    import torch

    import bincounter.train as trainer
    from bincounter.sagemaker import processing
    from bincounter.train_config import TrainConfig

    summary = processing.index(shard / "index-parts", shard / "shards", plan / "manifest")
    n = {s: v["samples"] for s, v in summary["splits"].items()}
    if n["train"] // batch < WARMUP_STEPS + 1:  # the timed steps: the full batches after the warm-up
        raise SystemExit(f"{n['train']} train images at batch {batch}: fewer than {WARMUP_STEPS + 1} full steps; "
                         "more --bins or a smaller --batch-size")
    real, marks = trainer.train_one_epoch, []

    def one_epoch(*args, **kw):  # each step's end marked (wall, this process's CPU), then the trainer's own hook
        hook = kw.get("on_step")

        def on_step():
            marks.append((time.perf_counter(), time.process_time()))
            if hook:
                hook()

        marks.append((time.perf_counter(), time.process_time()))
        return real(*args, **{**kw, "on_step": on_step})

    trainer.train_one_epoch = one_epoch
    try:
        cfg = TrainConfig(train_dir=str(shard / "shards" / "train"), val_dir=str(shard / "shards" / "val"),
                          model_dir=str(work / "model"), arch=arch, pretrained=False, epochs=1,
                          batch_size=batch, image_size=image_size, show_progress=False)
        trainer.train(cfg)
    finally:
        trainer.train_one_epoch = real
    # the first WARMUP_STEPS build oneDNN's kernels; the last step may be a partial batch: both left out
    timed = marks[WARMUP_STEPS:len(marks) - (1 if n["train"] % batch else 0)]
    images = batch * (len(timed) - 1)
    wall, cpu = (timed[-1][i] - timed[0][i] for i in (0, 1))
    ev = {}
    for split in ("test", "train"):
        t = time.perf_counter()
        processing.evaluate(work / "model", shard / "shards" / split, work / f"eval-{split}")
        ev[split] = time.perf_counter() - t
    more, dt = n["train"] - n["test"], ev["train"] - ev["test"]
    eval_rate = more / dt if dt > 0.2 * ev["train"] else n["train"] / ev["train"]  # noise: the whole run's rate
    return {"samples": n, "arch": arch, "image_size": image_size, "batch_size": batch,
            "torch_threads": torch.get_num_threads(),
            "cpu_train_img_s": images / wall, "cpu_train_img_per_cpu_s": images / cpu, "timed_steps": len(timed) - 1,
            "cpu_eval_img_s": eval_rate, "eval_s": ev}


def measure(a) -> dict:
    from bincounter.data.synth import synth_dataset

    with tempfile.TemporaryDirectory(prefix="pipeline_cost-") as d:
        work = Path(d)
        raw = work / "raw"
        synth_dataset(raw, per_class=a.bins // 5, seed=0, size=a.size)
        bins = 5 * (a.bins // 5)
        jpg = sorted((raw / "bin-images").iterdir())
        rates = {"bins": bins, "mean_jpeg_kb": sum(f.stat().st_size for f in jpg) / len(jpg) / 1e3}
        rates.update(measure_plan(raw, work, bins))
        rates["shard"] = [measure_shard(raw, work / "plan", work / f"s{ms:g}", ms, bins)
                          for ms in (a.latency_ms, 0.0)]
        rates.update(measure_train(work / "plan", work / f"s{a.latency_ms:g}" / "shard", work, a.arch,
                                   a.image_size, a.batch_size))
    return rates


def table(rates: dict, epochs: int) -> tuple[list[str], dict]:
    """The projection for `epochs` per training job: markdown rows and the assumptions it used."""
    from bincounter.sm import cost
    from bincounter.sm.pipeline import PipelineSpec as P

    price = {k: v["usd_per_hour"] for k, v in cost.table()["instances"].items()}
    cpu, gpu = P.processing_instance_type, P.instance_type
    shard = rates["shard"][0]
    rows = []
    plan_h = (ABID_BINS / rates["plan_bins_s"] + METADATA_COPY_S) / 3600
    rows.append(("Prepare (metadata only)", f"1 {cpu}", plan_h, plan_h * price[cpu]))
    # the step as measured: per manifest part, its fetch, then its check + pack on one core, one after the other
    shard_h = ABID_BINS / P.shard_instances / shard["shard_bins_s"] / 3600
    rows.append(("Shard", f"{P.shard_instances} {cpu}", shard_h, shard_h * P.shard_instances * price[cpu]))
    train_imgs = ABID_BINS * 0.8 * epochs
    lo, hi = (train_imgs / (P.train_instances * r * DDP_EFFICIENCY) / 3600 for r in reversed(GPU_IMG_S))
    waves = -(-P.max_jobs // P.max_parallel)
    for name, jobs, w in ((f"Tune ({P.max_jobs} trials, {P.max_parallel} at a time)", P.max_jobs, waves),
                          ("Train", 1, 1)):
        rows.append((name, f"{jobs} x {P.train_instances} {gpu}", (w * lo, w * hi),
                     tuple(jobs * P.train_instances * h * price[gpu] for h in (lo, hi))))
    ev_h = ABID_BINS * 0.1 / rates["cpu_eval_img_s"] / 3600
    rows.append(("Evaluate (53k test bins, CPU)", f"1 {cpu}", ev_h, ev_h * price[cpu]))
    total = [tuple(sum(r[i][j] if isinstance(r[i], tuple) else r[i] for r in rows) for j in (0, 1)) for i in (2, 3)]
    rows.append(("**One execution**", "", *total))
    out = ["| step | instances | wall time | cost |", "|---|---|---|---|"]
    for name, inst, h, usd in rows:
        hs = f"{h[0]:.1f}-{h[1]:.1f} h" if isinstance(h, tuple) else f"{h * 60:.0f} min"
        us = f"${usd[0]:,.0f}-{usd[1]:,.0f}" if isinstance(usd, tuple) else f"${usd:,.2f}"
        out.append(f"| {name} | {inst} | {hs} | {us} |")
    assumptions = {"s3_first_byte_latency_ms": shard["latency_ms"], "fetch_workers": shard["workers"],
                   "metadata_copy_s": METADATA_COPY_S, "gpu_img_s": GPU_IMG_S, "ddp_efficiency": DDP_EFFICIENCY,
                   "epochs": epochs, "split": "80/10/10",
                   "instance": f"{cpu} runs the code as this machine does (its 4 vCPUs are 2 cores)",
                   "s3_side": "moto and the proxy ran on this machine's cores; S3's side costs an instance no CPU, so "
                              "the measured fetch rate is a lower bound",
                   "prices": f"{cost.table()['region']}, {cost.table()['as_of']}"}
    return out, assumptions


def main() -> None:
    from bincounter.errors import UserError
    from bincounter.train_config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bins", type=int, default=400, help="synthetic bins (5 counts; the train split is 80%%)")
    ap.add_argument("--size", type=int, default=500, help="image side, px (ABID photos are about 500 x 400)")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added to every S3 request (first-byte latency)")
    ap.add_argument("--arch", default=TrainConfig.arch, help="the trainer's default")
    ap.add_argument("--image-size", type=int, default=TrainConfig.image_size, help="the trainer's default")
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                    help="the trainer's default, the smallest the pipeline's tuner tries")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 50 small bins, 64 px, no timing worth reading")
    ap.add_argument("--out", help="default: bench/results/pipeline_cost.json (--quick: pipeline_cost-quick.json)")
    a = ap.parse_args()
    a.out = a.out or f"bench/results/pipeline_cost{'-quick' if a.quick else ''}.json"
    if a.quick:
        a.bins, a.size, a.image_size, a.batch_size = 50, 96, 64, 8
    load = os.getloadavg()[0]  # this machine may be shared: the load average at start and end goes with the rates
    if a.bins < 50:
        raise SystemExit(f"--bins {a.bins}: at least 50 (10 per count, so that the split has val and test bins)")
    try:
        rates = measure(a)
    except UserError as e:  # a bin count or batch the steps refuse: their one line
        raise SystemExit(f"pipeline_cost: {e}") from None
    rows, assumptions = table(rates, TrainConfig.epochs)
    lat, zero = rates["shard"]
    machine = (f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, load average {load:.1f} at start, "
               f"{os.getloadavg()[0]:.1f} at end")
    print(f"\nmeasured on {machine}, {rates['bins']} bins of {a.size} px ({rates['mean_jpeg_kb']:.0f} KB JPEGs):")
    print(f"  plan {rates['plan_bins_s']:.0f} bins/s (marginal; {rates['plan_fixed_s']:.1f} s fixed)")
    for s in (lat, zero):
        print(f"  shard from S3 at {s['latency_ms']:g} ms, {s['workers']} GETs in flight: fetch "
              f"{s['fetch_bins_s']:.0f} bins/s ({s['fetch_cpu_ms_per_bin']:.1f} ms of the fetching process's CPU per "
              f"bin: {s['client_cpu_bound_bins_s']:.0f} bins/s on one core), check + pack {s['pack_bins_s']:.0f} "
              f"bins/s, the step {s['shard_bins_s']:.0f} bins/s")
    cpu_days = ABID_BINS * 0.8 * TrainConfig.epochs / rates["cpu_train_img_s"] / 86400
    print(f"  train on this CPU ({rates['torch_threads']} torch threads): {rates['arch']} {rates['image_size']} px, "
          f"batch {rates['batch_size']}: {rates['cpu_train_img_s']:.1f} img/s, {rates['cpu_train_img_per_cpu_s']:.1f} "
          f"img per CPU-second ({TrainConfig.epochs} epochs of ABID at that rate: {cpu_days:.0f} days); evaluate "
          f"{rates['cpu_eval_img_s']:.0f} img/s")
    print(f"assumed: S3 first-byte latency {lat['latency_ms']:g} ms; A10G {GPU_IMG_S[0]}-{GPU_IMG_S[1]} img/s at "
          f"224 px, {DDP_EFFICIENCY:.0%} DDP efficiency; metadata copy {METADATA_COPY_S // 60} min; "
          f"{TrainConfig.epochs} epochs; prices {assumptions['prices']}")
    smoke = "--quick: a smoke run of the code, not figures to quote"
    print(f"\nall {ABID_BINS:,} bins, one pipeline execution" + (f" ({smoke})" if a.quick else "") + ":")
    print("\n".join(rows))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
                               "rates": rates, "assumptions": assumptions, "table": rows}, indent=2))
    print(f"wrote {out}")
    if a.quick:
        print(smoke)


if __name__ == "__main__":
    main()

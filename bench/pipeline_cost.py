"""What 535k bins cost through `sm pipeline`: measure the data steps' per-bin rates on this machine (the real
`process plan` and `process shard` code on synthetic bins laid out like ABID, images at ABID's size), then
project each step to all of ABID on the pipeline's default instance types with the price table.

    python bench/pipeline_cost.py [--bins 400] [--size 500]

Fetch from S3 and GPU training cannot be measured here (no internet, no GPU): their rates are assumptions,
printed with the table (fetch: 32 parallel GETs of ~30 ms each per instance; GPU: docs/PERFORMANCE.md's
A10G estimate, capped by the 4 vCPUs' decode rate). Shard is projected as the code runs: a part's fetch, then
its single-threaded check + pack, one after the other (a core of the instance taken as fast as one here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ABID_BINS = 535_234
EPOCHS, MAX_JOBS, TRAIN_INSTANCES, SHARD_INSTANCES = 10, 8, 2, 8
FETCH_PER_S = 32 / 0.030 / 2  # 32 GETs in flight, ~30 ms each, 2 files (jpg + json) per bin: bins/s, assumed
METADATA_COPY_S = 900  # File mode copying 535k small metadata objects (~0.7 GB) before plan starts, assumed
GPU_IMG_S = (700, 1100)  # one A10G (ml.g5.xlarge), 224 px bf16: PERFORMANCE.md's model, bound by 4 vCPU decode


def measure(bins: int, size: int) -> dict:
    from bincounter.data.shards import parse_size
    from bincounter.data.synth import synth_dataset
    from bincounter.sagemaker import processing

    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d) / "raw", Path(d) / "out"
        synth_dataset(raw, per_class=bins // 5, seed=0, size=size)
        processing.plan(raw, out / "plan", part_size=100)  # warm: imports, font cache
        t = time.perf_counter()
        processing.plan(raw, out / "plan", part_size=100)
        plan_s = time.perf_counter() - t
        # plan's fixed cost (imports, plots) dominates small runs: its per-bin rate is the marginal one
        big = Path(d) / "big"
        synth_dataset(big, per_class=4 * bins // 5, seed=1, size=32)  # plan reads no image
        t = time.perf_counter()
        processing.plan(big, out / "plan-big", part_size=100)
        big_s = time.perf_counter() - t
        # the marginal rate; on a busy machine the difference can vanish in noise: then the whole run's rate
        plan_rate = 3 * bins / (big_s - plan_s) if big_s > 1.5 * plan_s else 4 * bins / big_s
        t = time.perf_counter()
        processing.shard(out / "plan" / "parts", str(raw), out / "shard", parse_size("256MB"))
        shard_s = time.perf_counter() - t
    return {"plan_bins_s": plan_rate, "plan_fixed_s": plan_s, "shard_bins_s": bins / shard_s}


def table(rates: dict) -> list[str]:
    from bincounter.sm import cost

    price = {k: v["usd_per_hour"] for k, v in cost.table()["instances"].items()}
    train_imgs = ABID_BINS * 0.8 * EPOCHS
    rows = []
    plan_h = (ABID_BINS / rates["plan_bins_s"] + METADATA_COPY_S) / 3600
    rows.append(("Prepare (metadata only)", "1 ml.m5.xlarge", plan_h, plan_h * price["ml.m5.xlarge"]))
    # what shard() does: per manifest part, fetch all of it (parallel GETs), then check + pack it on ONE core
    # (no overlap with the next part's fetch, no use of the other vCPUs): the two times add up, per bin
    per_bin_s = 1 / FETCH_PER_S + 1 / rates["shard_bins_s"]
    shard_h = ABID_BINS / SHARD_INSTANCES * per_bin_s / 3600
    rows.append(("Shard", f"{SHARD_INSTANCES} ml.m5.xlarge", shard_h,
                 shard_h * SHARD_INSTANCES * price["ml.m5.xlarge"]))
    for name, jobs, waves in (("Tune (8 trials, 2 at a time)", MAX_JOBS, MAX_JOBS // 2), ("Train", 1, 1)):
        lo, hi = (train_imgs / (TRAIN_INSTANCES * r * 0.85) / 3600 for r in reversed(GPU_IMG_S))  # 0.85: DDP
        rows.append((name, f"{jobs} x {TRAIN_INSTANCES} ml.g5.xlarge", (waves * lo, waves * hi),
                     tuple(jobs * TRAIN_INSTANCES * h * price["ml.g5.xlarge"] for h in (lo, hi))))
    # evaluate's DataLoader decodes on one core (num_workers=0), like packing; the CPU forward pass is NOT in it
    ev_h = ABID_BINS * 0.1 / rates["shard_bins_s"] / 3600
    rows.append(("Evaluate (53k test bins, CPU; decode only)", "1 ml.m5.xlarge", ev_h, ev_h * price["ml.m5.xlarge"]))
    out = ["| step | instances | wall time | cost |", "|---|---|---|---|"]
    for name, inst, h, usd in rows:
        hs = f"{h[0]:.1f}-{h[1]:.1f} h" if isinstance(h, tuple) else f"{h * 60:.0f} min"
        us = f"${usd[0]:,.0f}-{usd[1]:,.0f}" if isinstance(usd, tuple) else f"${usd:,.2f}"
        out.append(f"| {name} | {inst} | {hs} | {us} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bins", type=int, default=400)
    ap.add_argument("--size", type=int, default=500, help="image side, px (ABID photos are about 500 x 400)")
    a = ap.parse_args()
    rates = measure(a.bins, a.size)
    print(f"measured on this machine: plan {rates['plan_bins_s']:.0f} bins/s, shard (decode check + pack) "
          f"{rates['shard_bins_s']:.0f} bins/s; assumed: fetch {FETCH_PER_S:.0f} bins/s per instance, "
          f"A10G {GPU_IMG_S[0]}-{GPU_IMG_S[1]} img/s, metadata copy {METADATA_COPY_S // 60} min")
    print("\n".join(table(rates)))


if __name__ == "__main__":
    main()

"""Input at scale: per-image objects vs tar shards from an S3 API with a real GET's latency, and what that
means for 10k / 100k / 535k ABID bins on real S3.

Set-up: synthetic bins -> a train channel (one object per image) and the same channel as shards
(`bincounter data shard`), both uploaded to moto (server mode, loopback). Every request goes through a small
proxy that adds a fixed latency (--latency-ms, 20 by default: a typical S3 first-byte time).

Measured:
  1. read throughput at 1..16 parallel readers: per-image GETs vs whole-shard GETs (objects/s, samples/s, MB/s);
  2. the trainer fed from S3: efficientnet_b0 steps (--image-size, --batch-size) with a DataLoader of
     --workers processes that GET+decode per-image objects, or stream shards (one GET per shard, tar read as it
     arrives): time to the first step and images/s over the next steps, as a fraction of the in-memory limit
     (the same steps on a batch already in memory);
  3. File-mode copy: every object of the channel to local disk with 16 readers before the first step.
Projected (stated assumptions, printed with the table): objects, bytes, GETs, volume size, minutes before the
first step and the GET cost for 10k / 100k / 535k bins, File mode vs FastFile over per-image objects vs shards.

Moto and the proxy run in a process of their own but on the same cores as the trainer (torch gets half of
them): absolute per-image rates here are lower than on S3, whose per-request cost is not our CPU, so the
projection uses only the latency model, not these rates.

    python bench/input_at_scale.py [--bins 400] [--latency-ms 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from s3_latency import serve_s3  # bench/s3_latency.py (the script's folder is on sys.path)
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bincounter import COUNTS
from bincounter.data.shards import write_shards
from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset
from bincounter.model import create_model
from bincounter.preprocess import Preprocess

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
BUCKET = "bench"

# ------------------------------------------------------------------------------------ projection inputs
ABID_BINS = 535_234
GET_USD_PER_1000 = 0.0004  # S3 Standard GET, us-east-1 (2026 price list)
PUT_USD_PER_1000 = 0.005
ASSUME = {
    "image_kb": 55,  # mean ABID JPEG (the public bucket's bin-images/ averages ~50-60 KB; check with `data eda`)
    "s3_latency_ms": 20,  # first-byte latency of one GET
    "file_mode_parallel_gets": 16,  # concurrent GETs while SageMaker copies a File-mode channel (not documented)
    "volume_mb_per_s": 250,  # gp2/gp3 EBS write throughput the copy is bounded by
    "shard_mb": 256,
    "fastfile_range_mb": 8,  # FastFile reads an object in ranged GETs; the range size is not documented
    "volume_rule": "ceil(1.2 x data GB) + 10 GB (model, checkpoints, logs), at least SageMaker's 30 GB default",
}


def make_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(max_pool_connections=64, retries={"max_attempts": 2}))


# ---------------------------------------------------------------------------------------------- readers
def read_all(endpoint: str, keys: list[str], readers: int) -> dict:
    client = make_client(endpoint)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as ex:
        sizes = list(ex.map(lambda k: len(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()), keys))
    s = time.perf_counter() - t0
    return {"objects": len(keys), "bytes": sum(sizes), "seconds": s}


class PerImageS3(IterableDataset):
    """What a loader over per-image objects does in FastFile mode: one GET per image, then decode."""

    def __init__(self, endpoint, keys, pre):
        self.endpoint, self.keys, self.pre = endpoint, keys, pre

    def __iter__(self):
        wi = get_worker_info()
        k, n = (wi.id, wi.num_workers) if wi else (0, 1)
        client = make_client(self.endpoint)
        for key in self.keys[k::n]:
            data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            yield self.pre(data), COUNTS.index(int(key.split("/")[-2]))


class ShardS3(IterableDataset):
    """Shards streamed: one GET per shard, tar members decoded as the body arrives."""

    def __init__(self, endpoint, keys, pre):
        self.endpoint, self.keys, self.pre = endpoint, keys, pre

    def __iter__(self):
        wi = get_worker_info()
        k, n = (wi.id, wi.num_workers) if wi else (0, 1)
        client = make_client(self.endpoint)
        for key in self.keys[k::n]:
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
            with tarfile.open(fileobj=body, mode="r|") as tf:
                image = None
                for m in tf:
                    data = tf.extractfile(m).read()
                    if m.name.endswith(".json"):
                        yield self.pre(image), COUNTS.index(json.loads(data)["count"])
                    else:
                        image = data


def train_rate(model, opt, batches, limit_batch=None) -> dict:
    """Time to the first step (from the loader's start) and images/s from the end of the first step to the end
    of the last one (the loader's shutdown is not counted)."""
    t0 = time.perf_counter()
    first = t_first = t_last = None
    n = steps = 0
    it = iter(batches) if limit_batch is None else iter([limit_batch] * 1000)
    for x, y in it:
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if first is None:
            first = time.perf_counter() - t0
            t_first = time.perf_counter()
        else:
            n += len(y)
        t_last = time.perf_counter()
        if limit_batch is not None and steps >= STEPS + 1:
            break
    rest = (t_last or t_first) - t_first
    return {"first_step_s": first, "images_per_s": n / rest if rest > 0 else float("nan"), "steps": steps}


STEPS = 8


# ------------------------------------------------------------------------------------------- projection
def projection(bins: int, a: dict) -> dict:
    data_gb = bins * a["image_kb"] / 1e6
    shards = math.ceil(data_gb * 1000 / a["shard_mb"])
    lat = a["s3_latency_ms"] / 1000
    bw = a["volume_mb_per_s"]
    copy_images_s = max(bins * lat / a["file_mode_parallel_gets"], data_gb * 1000 / bw)
    copy_shards_s = max(shards * lat / min(a["file_mode_parallel_gets"], shards), data_gb * 1000 / bw)
    range_gets = math.ceil(data_gb * 1000 / a["fastfile_range_mb"]) + shards
    volume = max(30, math.ceil(1.2 * data_gb) + 10)
    usd = lambda gets: gets * GET_USD_PER_1000 / 1000  # noqa: E731
    return {
        "bins": bins, "data_gb": round(data_gb, 1), "image_objects": bins, "shards": shards,
        "file_mode_volume_gb": volume, "fastfile_volume_gb": 30,
        "file_images_min_before_step": copy_images_s / 60, "file_shards_min_before_step": copy_shards_s / 60,
        "fastfile_shards_s_before_step": lat + a["shard_mb"] / 1000,  # the first range of the first shard
        "gets_per_epoch_images": bins, "gets_per_epoch_shards_fastfile": range_gets,
        "usd_gets_per_epoch_images": usd(bins), "usd_gets_per_epoch_shards": usd(range_gets),
        "usd_upload_puts_images": bins * PUT_USD_PER_1000 / 1000,
        "usd_upload_puts_shards": (shards * math.ceil(a["shard_mb"] / 8)) * PUT_USD_PER_1000 / 1000,  # 8 MB parts
        # readers one GPU needs at 1,000 img/s (Little's law): concurrent GETs in flight
        "images_readers_for_1000_img_s": math.ceil(1000 * lat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=int, default=400)
    p.add_argument("--size", type=int, default=320, help="synthetic image width (px)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--readers", default="1,4,16")
    p.add_argument("--shard-size", default="1MB", help="small shards, so a few hundred bins still make several")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke test: 60 bins, 1 and 4 readers, 3 steps")
    p.add_argument("--out", default="bench/results/input_at_scale.json")
    a = p.parse_args()
    global STEPS
    if a.quick:
        a.bins, a.readers, a.size, a.batch_size = 60, "1,4", 256, 8
        STEPS = 2
        if a.out == p.get_default("out"):
            a.out = "bench/results/input_at_scale.quick.json"
    readers = [int(r) for r in a.readers.split(",")]
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # the other half: moto, the proxy, the loader
    import multiprocessing as mp

    from bincounter.data.shards import parse_size

    with tempfile.TemporaryDirectory(prefix="input_at_scale-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        synth_dataset(tmp / "abid", max(1, a.bins // len(COUNTS)), seed=0, size=a.size)
        split_dataset(tmp / "abid", tmp / "ch", val=0.0, test=0.0, seed=0)
        index = write_shards(tmp / "ch", tmp / "sh", shard_size=parse_size(a.shard_size))["train"]
        print(f"data: {index['samples']} bins, {index['bytes'] / 1e6:.1f} MB in {len(index['shards'])} shards "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        s3proc = ctx.Process(target=serve_s3, args=(a.latency_ms / 1000, q), daemon=True)
        s3proc.start()
        moto, proxy_url = q.get(timeout=120)
        try:
            direct = make_client(moto)
            direct.create_bucket(Bucket=BUCKET)
            image_keys, shard_keys = [], []
            for f in sorted((tmp / "ch" / "train").rglob("*.jpg")):
                k = f"img/{f.relative_to(tmp / 'ch').as_posix()}"
                direct.upload_file(str(f), BUCKET, k)
                image_keys.append(k)
            for f in sorted((tmp / "sh" / "train").glob("*.tar")):
                k = f"shards/train/{f.name}"
                direct.upload_file(str(f), BUCKET, k)
                shard_keys.append(k)
            mean_obj_kb = sum(f.stat().st_size for f in (tmp / "ch" / "train").rglob("*.jpg")) / len(image_keys) / 1e3

            # 1. read throughput
            reads = []
            for r in readers:
                img = read_all(proxy_url, image_keys, r)
                sh = read_all(proxy_url, shard_keys, r)
                reads.append({"readers": r, "image_objects_per_s": img["objects"] / img["seconds"],
                              "image_mb_per_s": img["bytes"] / 1e6 / img["seconds"],
                              "shard_samples_per_s": index["samples"] / sh["seconds"],
                              "shard_mb_per_s": sh["bytes"] / 1e6 / sh["seconds"],
                              "image_s": img["seconds"], "shard_s": sh["seconds"]})
                print(f"readers {r}: per-image {reads[-1]['image_objects_per_s']:.0f} obj/s, shards "
                      f"{reads[-1]['shard_samples_per_s']:.0f} samples/s", file=sys.stderr)
            # 3. File mode: copy everything with 16 readers, then the first step could start
            file_copy = {"images_s": read_all(proxy_url, image_keys, 16)["seconds"],
                         "shards_s": read_all(proxy_url, shard_keys, 16)["seconds"]}

            # 2. the trainer fed from S3
            pre = Preprocess(a.image_size)
            model = create_model("efficientnet_b0", "timm", len(COUNTS), pretrained=False)
            model.to(memory_format=torch.channels_last).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            bs = a.batch_size
            x0 = torch.randn(bs, 3, a.image_size, a.image_size)
            y0 = torch.randint(0, len(COUNTS), (bs,))
            train_rate(model, opt, None, (x0, y0))  # warm-up
            limit = train_rate(model, opt, None, (x0, y0))
            need = bs * (STEPS + 1)
            runs = {}
            for name, ds in [("per-image", PerImageS3(proxy_url, image_keys[:need], pre)),
                             ("shards", ShardS3(proxy_url, shard_keys, pre))]:
                dl = DataLoader(ds, batch_size=bs, num_workers=a.workers, drop_last=True)
                r = train_rate(model, opt, _take(dl, STEPS + 1))
                r["fraction_of_limit"] = r["images_per_s"] / limit["images_per_s"]
                runs[name] = r
                print(f"trainer <- {name}: {r}", file=sys.stderr)
        finally:
            s3proc.terminate()

    proj = [projection(b, ASSUME) for b in (10_000, 100_000, ABID_BINS)]
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "args": vars(a), "bins": index["samples"], "mean_image_kb": mean_obj_kb, "shards": len(index["shards"]),
           "reads": reads, "file_mode_copy_s": file_copy, "limit": limit, "trainer": runs,
           "assumptions": ASSUME, "prices": {"get_per_1000": GET_USD_PER_1000, "put_per_1000": PUT_USD_PER_1000},
           "projection": proj}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))

    print(f"\ninput at scale: moto on loopback + {a.latency_ms:.0f} ms per request, {index['samples']} bins "
          f"({mean_obj_kb:.0f} KB each), {len(index['shards'])} shards, {out['machine']}, {out['date']}")
    print(f"{'readers':>8}{'per-image obj/s':>17}{'MB/s':>7}{'shards samples/s':>18}{'MB/s':>7}")
    for r in reads:
        print(f"{r['readers']:>8}{r['image_objects_per_s']:>17.0f}{r['image_mb_per_s']:>7.1f}"
              f"{r['shard_samples_per_s']:>18.0f}{r['shard_mb_per_s']:>7.1f}")
    print(f"File-mode copy with 16 readers: per-image {file_copy['images_s']:.1f} s, "
          f"shards {file_copy['shards_s']:.1f} s")
    print(f"\ntrainer (efficientnet_b0, {a.image_size} px, batch {bs}, {a.workers} loader workers): in-memory limit "
          f"{limit['images_per_s']:.1f} img/s")
    print(f"{'input':>10}{'first step s':>14}{'img/s':>8}{'of limit':>10}")
    for name, r in runs.items():
        print(f"{name:>10}{r['first_step_s']:>14.2f}{r['images_per_s']:>8.1f}{r['fraction_of_limit']:>10.2f}")
    print(f"\nprojection on real S3 (assumed: {ASSUME['image_kb']} KB/image, {ASSUME['s3_latency_ms']} ms/GET, "
          f"{ASSUME['file_mode_parallel_gets']} parallel GETs and {ASSUME['volume_mb_per_s']} MB/s volume in File "
          f"mode, {ASSUME['shard_mb']} MB shards, FastFile ranges {ASSUME['fastfile_range_mb']} MB, "
          f"GET ${GET_USD_PER_1000}/1000)")
    print(f"{'bins':>8}{'GB':>6}{'objects':>9}{'shards':>7}{'File vol GB':>12}{'File img min':>13}"
          f"{'File shard min':>15}{'FastFile shard s':>17}{'GETs/epoch img':>15}{'shard':>7}{'$ img':>8}{'$ shard':>9}")
    for r in proj:
        print(f"{r['bins']:>8}{r['data_gb']:>6.1f}{r['image_objects']:>9}{r['shards']:>7}"
              f"{r['file_mode_volume_gb']:>12}"
              f"{r['file_images_min_before_step']:>13.1f}{r['file_shards_min_before_step']:>15.1f}"
              f"{r['fastfile_shards_s_before_step']:>17.2f}{r['gets_per_epoch_images']:>15}"
              f"{r['gets_per_epoch_shards_fastfile']:>7}{r['usd_gets_per_epoch_images']:>8.3f}"
              f"{r['usd_gets_per_epoch_shards']:>9.4f}")
    print(f"wrote {a.out}")


def _take(dl, n):
    for i, (x, y) in enumerate(dl):
        if i >= n:
            return
        yield x, y


if __name__ == "__main__":
    main()

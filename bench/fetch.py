"""ABID download throughput against a local S3 API (moto in server mode on loopback), 1 / 8 / 32 workers.

Seeds a bucket laid out like aft-vbi-pds with synthetic bins, fetches everything into a fresh directory
per worker count, prints a table last and writes JSON (bench/results/fetch.json). On loopback this
measures the client's overhead and parallelism, not the internet.

    python bench/fetch.py [--bins 300] [--size 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from bincounter.data.s3 import fetch, ids_from_file_list, s3_client
    from bincounter.data.synth import synth_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=int, default=300, help="total bins (split over counts 1..5)")
    p.add_argument("--size", type=int, default=500, help="synthetic image width (ABID photos are ~500 px)")
    p.add_argument("--workers", default="1,8,32")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench/results/fetch.json")
    a = p.parse_args()
    if a.quick:
        a.bins, a.size, a.workers = 25, 128, "1,8"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            synth_dataset(src, max(1, a.bins // 5), seed=0, size=a.size)
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket="aft-vbi-pds")
            for f in sorted((src / "metadata").iterdir()) + sorted((src / "bin-images").iterdir()):
                s3.upload_file(str(f), "aft-vbi-pds", f"{f.parent.name}/{f.name}")
            ids = ids_from_file_list(src / "file_list.json")
            for w in (int(x) for x in a.workers.split(",")):
                client = s3_client(endpoint, "us-east-1", max_pool=w + 4)
                rep = fetch(Path(tmp) / f"out{w}", ids, client=client, workers=w)
                rows.append({"workers": w, "files": rep.done, "failed": len(rep.failed), "seconds": rep.seconds,
                             "files_per_s": rep.done / rep.seconds, "mb_per_s": rep.bytes / 2**20 / rep.seconds})
    finally:
        server.stop()
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nfetch from moto on loopback, {a.bins} bins ({2 * len(ids)} files), {out['machine']}")
    print(f"{'workers':>8}{'files/s':>10}{'MB/s':>8}{'failed':>8}")
    for r in rows:
        print(f"{r['workers']:>8}{r['files_per_s']:>10.1f}{r['mb_per_s']:>8.2f}{r['failed']:>8}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

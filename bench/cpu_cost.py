"""What a million predictions cost on CPUs (issue 25 item 4), from a bench/serve.py result: its measured req/s per
vCPU (best configuration at concurrency 16, per served variant: PyTorch image, CPU image fp32, CPU image INT8; the
vCPUs are the machine's, which no container was limited below), the instance price table
(src/bincounter/sm/prices.json, its date printed) and, for serverless, the container's memory after the load
(docker stats) and the fastest configuration's latency of one request at concurrency 1.

Assumptions, printed with the table: req/s scales with an instance's vCPUs (one ONNX Runtime worker per core;
measured on one 2-vCPU machine only, a different CPU than c6i/m6i); an endpoint busy all the time (a real one is
not: divide by its utilisation); serverless bills the measured single-request latency per request (its vCPUs
depend on the memory size and are not measured here). Prints a table and writes JSON.

    python bench/serve.py --images bincounter:local,bincounter:cpu --precisions fp32,int8   # first
    python bench/cpu_cost.py [--serve bench/results/serve.json] [--out bench/results/cpu_cost.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bincounter.sm import cost


def summarize(serve: dict) -> list[dict]:
    """Per served variant: its best req/s at concurrency 16 over the configurations, per vCPU, and what it costs."""
    if not str(serve.get("device", "cpu")).startswith("cpu"):
        raise SystemExit(f"this serve.py result ran on {serve['device']}: CPU prices need a CPU run")
    # what the containers could use: their --server-cpus, else every CPU of the host
    cpus = len(serve["server_cpus"]) if serve.get("server_cpus") else int(serve.get("host_cpus")
                                                                          or serve["cpus_per_container"])
    best: dict[str, dict] = {}
    c1: dict[str, float] = {}  # serverless answers one request at a time: its fastest single request
    for c in serve["containers"]:
        row16 = next(r for r in c["rows"] if r["concurrency"] == 16)
        row1 = next(r for r in c["rows"] if r["concurrency"] == 1)
        label = c.get("variant", c["image"])
        c1[label] = min(c1.get(label, float("inf")), row1["p50_ms"])
        if label not in best or row16["rps"] > best[label]["rps"]:
            best[label] = {"variant": label, "config": f"batch {c['batch_size']}/{c['max_batch_delay_ms']}ms",
                           "rps": row16["rps"], "p99_ms": row16["p99_ms"], "memory_mib": c.get("memory_mib")}
    out = []
    for b in best.values():
        b["c1_p50_ms"] = c1[b["variant"]]
        per_vcpu = b["rps"] / cpus
        instances = cost.per_million_on_instances(per_vcpu)
        serverless = (cost.per_million_serverless(b["memory_mib"], b["c1_p50_ms"] / 1000, serve["request_bytes"])
                      if b["memory_mib"] else {"memory_mb": None, "why": "no memory figure in serve.json"})
        out.append({**b, "rps_per_vcpu": per_vcpu, "instances": instances, "serverless": serverless})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=Path, default=Path("bench/results/serve.json"),
                   help="bench/serve.py's JSON (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench/results/cpu_cost.json"), help="default: %(default)s")
    p.add_argument("--top", type=int, default=3,
                   help="instance types shown per variant, cheapest first (default: %(default)s)")
    a = p.parse_args()
    if not a.serve.is_file():
        raise SystemExit(f"{a.serve}: not found; run bench/serve.py first (see --help)")
    serve = json.loads(a.serve.read_text())
    rows = summarize(serve)
    prices = cost.table()
    print(f"from {a.serve} ({serve['date']}, {serve['machine']}); prices: {prices['region']} on-demand of "
          f"{prices['as_of']}; an endpoint busy all the time; req/s assumed to scale with vCPUs")
    print(f"{'variant':<28}{'req/s/vCPU':>11}  {'instance':<15}{'$/h':>7}{'req/s':>8}{'$ per 1M':>10}")
    for r in rows:
        for i, inst in enumerate(r["instances"][:a.top]):
            name = r["variant"] if len(r["variant"]) <= 27 else "..." + r["variant"][-24:]  # keep " int8"
            head = (f"{name:<28}{r['rps_per_vcpu']:>11.1f}" if i == 0 else f"{'':<39}")
            print(f"{head}  {inst['instance_type']:<15}{inst['usd_per_hour']:>7.3f}{inst['rps']:>8.0f}"
                  f"{inst['usd_per_million']:>10.2f}")
        s = r["serverless"]
        what = (f"serverless {s['memory_mb']} MB ({r['memory_mib']:.0f} MiB used, {r['c1_p50_ms']:.0f} ms/request):"
                f" ${s['usd_per_million']:.2f} per 1M (compute {s['compute_usd_per_million']:.2f} + data "
                f"{s['data_usd_per_million']:.2f})" if s.get("memory_mb") else f"serverless: {s['why']}")
        print(f"{'':<41}{what}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"serve": str(a.serve), "serve_date": serve["date"], "machine": serve["machine"],
                                 "prices_as_of": prices["as_of"], "region": prices["region"], "variants": rows},
                                indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Where a served request's CPU goes: the front, MMS's JVM, the model worker (issue 25 item 2's profile).

Starts the CPU image on one CPU (docker --cpuset-cpus, the client on the others), sends --requests JPEG requests
at concurrency 16, and reads every container process's CPU time (/proc/PID/stat utime + stime) before and
after: CPU ms per request of each. The model worker's share includes decoding, preprocessing and the forward
pass, which bench/serve.py's in-process limit measures alone; the rest is the serving path's. Prints lines and
writes JSON (bench/results/serve_cpu_split.json). Needs Docker and the CPU image.

    python bench/serve_cpu_split.py --model-dir DIR [--precision fp32|int8] [--batch 4 --delay-ms 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

READ = ("for p in /proc/[0-9]*; do echo $(cut -d' ' -f1,14,15 $p/stat 2>/dev/null) "
        "$(tr '\\0' ' ' < $p/cmdline 2>/dev/null | cut -c1-120); done")


def cpu_times(container: str) -> dict[str, tuple[int, str]]:
    """pid -> (CPU clock ticks so far, command line) of every process in the container."""
    out = subprocess.run(["docker", "exec", container, "sh", "-c", READ], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) >= 3 and parts[0].isdigit():
            found[parts[0]] = (int(parts[1]) + int(parts[2]), parts[3] if len(parts) > 3 else "")
    return found


def kind(cmd: str) -> str:
    """What a container process is, from its command line."""
    if cmd.startswith("java "):
        return "MMS (JVM)"
    if "model_service_worker" in cmd:
        return "model worker"
    if "bincounter.serving.server" in cmd:
        return "front"
    if "multi-model-server" in cmd:
        return "MMS launcher"
    return cmd.split(" ")[0][:30] or "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a model directory with model.onnx (and "
                                                                  "model.int8.onnx marked servable for int8)")
    p.add_argument("--image", default="bincounter:cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--batch", type=int, default=4, help="MMS batch size (default %(default)s)")
    p.add_argument("--delay-ms", type=int, default=1, help="MMS max batch delay (default %(default)s)")
    p.add_argument("--server-cpus", default="1", help="docker --cpuset-cpus of the server (default %(default)s)")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--out", default="bench/results/serve_cpu_split.json")
    a = p.parse_args()
    from serve import load, start_server  # bench/serve.py, beside this script

    from bincounter.data.synth import synth_dataset

    with tempfile.TemporaryDirectory() as tmp:
        synth_dataset(Path(tmp) / "abid", 1, seed=0, size=320)  # one request body: a synthetic bin photo
        body = next((Path(tmp) / "abid" / "bin-images").iterdir()).read_bytes()
    names: list[str] = []
    variant = {"image": a.image, "precision": a.precision, "label": f"{a.image} {a.precision}"}
    try:  # bench/serve.py's own start (waits for the first 200) and closed-loop load
        run = start_server(variant, a.model_dir, body, a.batch, a.delay_ms, names, ["--cpuset-cpus", a.server_cpus])
        load(run["host"], 8080, body, 16, 160)  # warm-up
        before = cpu_times(run["container"])
        per = max(1, a.requests // 16)
        measured = load(run["host"], 8080, body, 16, 16 * per)
        after = cpu_times(run["container"])
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    n = measured["requests"]
    tick = os.sysconf("SC_CLK_TCK")
    split: dict[str, float] = {}
    for pid, (ticks, cmd) in after.items():
        used = ticks - before.get(pid, (0, ""))[0]
        if used > 0 and "/proc/" not in cmd:
            split[kind(cmd)] = split.get(kind(cmd), 0.0) + 1000 * used / tick / n
    doc = {"precision": a.precision, "batch": a.batch, "delay_ms": a.delay_ms, "requests": n,
           "failed": measured["errors"], "rps": round(measured["rps"], 1),
           "wall_ms_per_request": round(1000 / measured["rps"], 2),
           "cpu_ms_per_request": {k: round(v, 2) for k, v in sorted(split.items(), key=lambda kv: -kv[1])},
           "date": time.strftime("%Y-%m-%d"), "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(f"{a.precision}, MMS batch {a.batch} / {a.delay_ms} ms, {n} requests at concurrency 16: {doc['rps']} req/s, "
          f"{doc['failed']} failed; CPU ms per request:")
    for k, v in doc["cpu_ms_per_request"].items():
        print(f"  {k:14s} {v:6.2f}")
    print(f"  total {sum(split.values()):.2f} ms; wall per request {doc['wall_ms_per_request']} ms; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

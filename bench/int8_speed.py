"""INT8 vs fp32 speed of an architecture on this CPU, in process: is INT8 worth serving here?

For each --archs entry (random weights: speed does not depend on them): model.onnx exported as the trainer
exports it, quantized as `export --quantize int8` does (U8S8 reduce_range, 7-bit weights), as `--for-cpu vnni`
does (U8S8, 8-bit weights) and with ONNX Runtime's default types (S8S8), calibrated on random inputs; images/s
of each on 1 and 2 intra-op threads, at batch 1 and 8, the models interleaved in --rounds rounds of --seconds
(medians; "vs fp32" is the median of the per-round ratios, the figure to read on a shared machine). The CPU's
AVX2/AVX-512/VNNI/AMX flags are in the JSON: INT8's gain depends on them (docs/PERFORMANCE.md#vnni). Prints a
table; writes JSON (bench/results/int8_speed.json). Accuracy is bench/int8.py's; served requests/s
bench/serve.py's.

    python bench/int8_speed.py [--archs efficientnet_b0,tf_efficientnet_lite0] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from int8 import interleaved_speeds  # bench/int8.py, beside this script

from bincounter.artifact import ONNX
from bincounter.model import create_model, export_onnx, save_artifact
from bincounter.preprocess import Preprocess
from bincounter.quantize import DEFAULT, VNNI, QuantSettings, quantize_bytes, session
from bincounter.serving.onnx_runtime import cpu_flags

CONFIGS = {"U8S8 reduce_range (export's default)": DEFAULT, "U8S8 (--for-cpu vnni)": VNNI,
           "S8S8 (ONNX Runtime's default types)": QuantSettings("int8", "int8", False)}


def one_arch(arch: str, size: int, args, tmp: Path) -> dict:
    model_dir = tmp / arch
    save_artifact(model_dir, create_model(arch, "timm", 5, pretrained=False), arch, "timm", Preprocess(size))
    export_onnx(model_dir)
    cal = np.random.default_rng(0).normal(size=(32, 3, size, size)).astype(np.float32)
    models = {"fp32": (model_dir / ONNX).read_bytes()}
    models |= {name: quantize_bytes(model_dir / ONNX, cal, s) for name, s in CONFIGS.items()}
    rows = {}
    for threads in args.threads:
        sessions = {name: session(data, threads=threads) for name, data in models.items()}
        for batch in args.batches:
            speeds = interleaved_speeds(sessions, np.ascontiguousarray(cal[:batch]), args.rounds, args.seconds)
            for name, speed in speeds.items():
                rows[f"{name} | {threads} | {batch}"] = {"model": name, "threads": threads, "batch": batch, **speed}
    return {"arch": arch, "image_size": size, "rows": list(rows.values())}


def main() -> int:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="efficientnet_b0,tf_efficientnet_lite0", help="timm names, comma-separated")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", default="1,2", help="intra-op threads to measure, comma-separated")
    p.add_argument("--batches", default="1,8", help="batch sizes to measure, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5, help="timing per model per round")
    p.add_argument("--out", default="bench/results/int8_speed.json")
    args = p.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="bincounter-int8-speed-") as tmp:
        runs = [one_arch(a.strip(), args.image_size, args, Path(tmp)) for a in args.archs.split(",") if a.strip()]
    doc = {"runs": runs, "cpu_flags": cpu_flags(), "onnxruntime": onnxruntime.__version__,
           "cpu": next((ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                       "?") if Path("/proc/cpuinfo").exists() else "?",
           "loadavg_end": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%d"),
           "options": {k: getattr(args, k) for k in ("image_size", "threads", "batches", "rounds", "seconds")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print("| arch | model | threads | batch | images/s | vs fp32 |\n|---|---|---|---|---|---|")
    for run in runs:
        for r in run["rows"]:
            print(f"| {run['arch']} {run['image_size']} px | {r['model']} | {r['threads']} | {r['batch']} | "
                  f"{r['images_per_s']:.1f} | {r['vs_fp32']:.2f}x |")
    print(f"CPU {doc['cpu']}, flags {', '.join(doc['cpu_flags']) or '?'}; ONNX Runtime {doc['onnxruntime']}; "
          f"load average at the end {doc['loadavg_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

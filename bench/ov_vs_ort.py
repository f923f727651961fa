"""OpenVINO vs ONNX Runtime on the CPU (issue 25 item 5): would OpenVINO be worth a third runtime in the CPU image?

The same two files the CPU image would serve (fp32 model.onnx and the INT8 model.int8.onnx that `export --quantize
int8` writes: QDQ, U8S8, 7-bit weights), each run by ONNX Runtime and by OpenVINO (which reads QDQ ONNX and runs it in
INT8), one inference thread each (what one CPU-image worker has), batches of 1 and 4, the runtimes interleaved in
--rounds rounds of --seconds each (medians of images/s; the noise of a shared machine hits them alike). The
threshold to add OpenVINO: >= 1.2x ONNX Runtime INT8. Prints a table and writes JSON.

Needs `pip install openvino onnxruntime` (OpenVINO is not a project dependency: a separate venv is fine) and the two
files, e.g. from `bincounter export --model-dir DIR --quantize int8 --calibration VAL --force-servable`:

    python bench/ov_vs_ort.py --fp32 DIR/model.onnx --int8 DIR/model.int8.onnx [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def ort_runner(path: Path):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def ov_runner(path: Path):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]


def images_per_s(run, x: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, help="model.onnx")
    p.add_argument("--int8", type=Path, required=True, help="model.int8.onnx")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="per runtime, model and batch size, each round")
    p.add_argument("--out", type=Path, default=Path("bench/results/openvino.json"))
    a = p.parse_args()
    for f in (a.fp32, a.int8):
        if not f.is_file():
            raise SystemExit(f"{f}: not found (see --help for how to make the two files)")
    import onnxruntime
    import openvino

    runners = {f"{rt} {prec}": make(path) for prec, path in (("fp32", a.fp32), ("int8", a.int8))
               for rt, make in (("onnxruntime", ort_runner), ("openvino", ov_runner))}
    rng = np.random.default_rng(0)
    batches = {bs: rng.standard_normal((bs, 3, a.image_size, a.image_size)).astype(np.float32) for bs in (1, 4)}
    for run in runners.values():  # warm-up, and a check that every pair agrees on the output shape
        for x in batches.values():
            assert run(x).shape[0] == len(x)
    got = {(k, bs): [] for k in runners for bs in batches}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for bs, x in batches.items():
            for k, run in runners.items():
                got[(k, bs)].append(images_per_s(run, x, a.seconds))
    med = {f"{k}, batch {bs}": statistics.median(v) for (k, bs), v in got.items()}
    base = {bs: statistics.median(got[("onnxruntime int8", bs)]) for bs in batches}
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "date": time.strftime("%Y-%m-%d %H:%M"), "versions": {"openvino": openvino.__version__,
                                                                  "onnxruntime": onnxruntime.__version__},
           "image_size": a.image_size, "threads": 1, "images_per_s": med,
           "openvino_int8_over_onnxruntime_int8": {str(bs): statistics.median(got[("openvino int8", bs)]) / base[bs]
                                                   for bs in batches}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"\n{a.image_size} px, 1 thread, {out['machine']}; openvino {openvino.__version__}, onnxruntime "
          f"{onnxruntime.__version__}")
    print(f"{'runtime, model, batch':<34}{'images/s':>9}{'vs ORT int8':>13}")
    for (k, bs), v in got.items():
        print(f"{k + ', batch ' + str(bs):<34}{statistics.median(v):>9.1f}{statistics.median(v) / base[bs]:>12.2f}x")
    worth = all(r >= 1.2 for r in out["openvino_int8_over_onnxruntime_int8"].values())
    print(f"OpenVINO INT8 / ONNX Runtime INT8 >= 1.2x at every batch size: {'yes' if worth else 'no'}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

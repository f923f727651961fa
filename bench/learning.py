"""Does the trainer learn? Synthetic bins -> split -> a few CPU epochs -> accuracy vs chance (0.2).

Prints a table and writes JSON (bench/results/learning.json). Not a unit test: the figures depend on the
machine and the seed; the claim to check is "clearly above chance".

    python bench/learning.py [--per-class 100] [--epochs 6] [--image-size 96] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset
from bincounter.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--arch", default="efficientnet_b0")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI smoke: 20 bins per class, 1 epoch")
    p.add_argument("--out", default="bench/results/learning.json")
    a = p.parse_args()
    if a.quick:
        a.per_class, a.epochs = 20, 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        synth_dataset(Path(tmp) / "abid", a.per_class, seed=a.seed, size=256)
        split_dataset(Path(tmp) / "abid", Path(tmp) / "ch", val=0.15, test=0.15, seed=a.seed)
        cfg = TrainConfig(train_dir=f"{tmp}/ch/train", val_dir=f"{tmp}/ch/val", test_dir=f"{tmp}/ch/test",
                          model_dir=f"{tmp}/model", arch=a.arch, pretrained=False, epochs=a.epochs,
                          image_size=a.image_size, lr=a.lr, batch_size=32, seed=a.seed, show_progress=False)
        result = train(cfg)
        wall = time.monotonic() - t0
    rows = result["history"]
    print(f"\n{'epoch':>5} {'train_loss':>10} {'val_loss':>9} {'val_acc':>8} {'val_rmse':>9} {'time_s':>7}")
    for r in rows:
        print(f"{r['epoch']:>5} {r['train_loss']:>10.4f} {r['val_loss']:>9.4f} {r['val_acc']:>8.3f} "
              f"{r['val_rmse']:>9.3f} {r['epoch_time_s']:>7.1f}")
    t = result["test"]
    print(f"test: accuracy {t['accuracy']:.3f} (chance 0.200), RMSE {t['rmse']:.3f}, n={t['n']}; "
          f"wall {wall:.0f} s")
    out = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "args": vars(a),
           "history": rows, "test": {k: t[k] for k in ("accuracy", "rmse", "n", "per_class_recall")},
           "wall_s": round(wall, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

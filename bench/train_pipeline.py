"""Training throughput: how close bincounter's input pipeline comes to the model's own limit.

  (a) limit      forward + backward + optimizer step on tensors already in memory
  (b) plain      torchvision ImageFolder + PIL decode + torchvision transforms + DataLoader (what most
                 SageMaker examples do)
  (c) bincounter ChannelDataset (JPEG draft decode, shared preprocessing, augmentation) + DataLoader

Same model, image size, batch size, torch threads and DataLoader workers for all three. Prints a table
last and writes JSON (bench/results/train_pipeline.json). Also measures 1 vs 2 processes of gloo DDP
(--ddp). Timing only; no assertions.

--options measures (a) and (c) again with one option at a time on top of the baseline (on a GPU, the
things worth trying there): channels_last, bf16 (autocast), compile (torch.compile), gpu_decode (the
DataLoader only reads JPEG bytes; nvJPEG decodes the batch on the GPU through torchvision.io.decode_jpeg,
then resize/flip/normalise on the GPU; CUDA only).

    python bench/train_pipeline.py [--image-size 96] [--batch-size 32] [--steps 20] [--workers 2] [--quick]
    python bench/train_pipeline.py --device cuda --image-size 224 --batch-size 64 --workers 8 \
        --options channels_last,bf16,compile,gpu_decode
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bincounter.data.dataset import ChannelDataset
from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset
from bincounter.model import create_model
from bincounter.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


def make_data(root: Path, per_class: int, size: int) -> Path:
    synth_dataset(root / "abid", per_class, seed=0, size=size)
    split_dataset(root / "abid", root / "ch", val=0.0, test=0.0, seed=0)
    return root / "ch" / "train"


OPTIONS = ("channels_last", "bf16", "compile", "gpu_decode")


def step_fn(model, opt, device: torch.device, option: str | None = None):
    """One training step on `device`, with at most one of OPTIONS switched on."""
    memory_format = torch.channels_last if option == "channels_last" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    fwd = torch.compile(model) if option == "compile" else model

    def step(x, y):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=option == "bf16"):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # time the work, not its queueing
    return step


class JpegBytes(torch.utils.data.Dataset):
    """gpu_decode's dataset: the DataLoader only reads files; decoding happens on the GPU."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision.io import read_file

        path, label = self.samples[i]
        return read_file(str(path)), label


def gpu_decoded(loader, image_size: int, device: torch.device):
    """(x, y) batches decoded by nvJPEG on the GPU, resized, randomly flipped and normalised there."""
    from torchvision.io import decode_jpeg

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    for data, labels in loader:
        images = decode_jpeg(list(data), device=device)
        x = torch.stack([F.interpolate(im[None].float(), size=(image_size, image_size), mode="bilinear",
                                       antialias=True, align_corners=False)[0] for im in images])
        flip = torch.rand(x.shape[0], device=device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        yield (x - mean) / std, torch.as_tensor(labels)


def timed(batches, step, steps: int, warmup: int = 2) -> float:
    """images/s over `steps` steps after `warmup` steps; batches is an iterator of (x, y)."""
    n = 0
    it = iter(batches)
    for _ in range(warmup):
        x, y = next(it)[:2]
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)[:2]
        step(x, y)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def forever(loader):
    while True:
        yield from loader


def run(a) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = make_data(Path(tmp), a.per_class, a.source_size)
        # (a) the limit: one fixed batch, already a tensor (on the device: no copy at all)
        x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device)
        y = torch.randint(0, 5, (a.batch_size,), device=device)
        # (b) the plain approach
        import torchvision
        from torchvision import transforms as T

        plain = torchvision.datasets.ImageFolder(str(train_dir), transform=T.Compose([
            T.Resize((a.image_size, a.image_size)), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
        # (c) bincounter
        ds = ChannelDataset(train_dir, Preprocess(a.image_size), train=True)

        def loader(d, **kw):
            return DataLoader(d, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                              persistent_workers=a.workers > 0, drop_last=True, pin_memory=device.type == "cuda",
                              **kw)

        def measured(option):
            model = create_model(a.arch, num_classes=5)
            model.train()
            step = step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), device, option)
            tag = f"+{option}" if option else ""
            out = {f"limit{tag}": (step, iter(lambda: (x, y), None))}
            if option == "gpu_decode":
                raw = loader(JpegBytes(ds.samples), collate_fn=lambda b: tuple(zip(*b, strict=True)))
                out[f"bincounter{tag}"] = (step, gpu_decoded(forever(raw), a.image_size, device))
            else:
                out[f"bincounter{tag}"] = (step, forever(loader(ds)))
            if option is None:
                out["plain"] = (step, forever(loader(plain)))
            return out

        options = [o for o in a.options.split(",") if o]
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise SystemExit(f"unknown --options {sorted(unknown)}; choose from {', '.join(OPTIONS)}")
        if "gpu_decode" in options and device.type != "cuda":
            print("gpu_decode needs --device cuda; skipped", file=sys.stderr)
            options.remove("gpu_decode")
        runs = {}
        for option in [None, *options]:
            runs.update(measured(option))
        # interleaved rounds, median per pipeline: this machine is shared and drifts
        samples = {k: [] for k in runs}
        for _ in range(a.rounds):
            for k, (step, it) in runs.items():
                samples[k].append(timed(it, step, a.steps))
        res = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
        # decode-only rates, to see the pipeline's own ceiling
        files = [p for p, _ in ds.samples][:200]
        t0 = time.perf_counter()
        for f in files:
            ds.pre(str(f))
        res["decode_bincounter_per_s"] = len(files) / (time.perf_counter() - t0)
        tf = plain.transform
        from PIL import Image

        t0 = time.perf_counter()
        for f in files:
            tf(Image.open(f).convert("RGB"))
        res["decode_plain_per_s"] = len(files) / (time.perf_counter() - t0)
    return res


def ddp_rate(a, nproc: int) -> float:
    """images/s of the real trainer under torchrun with nproc gloo processes (1 thread each)."""
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = make_data(Path(tmp), a.per_class, a.source_size)
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, a.threads // nproc))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               "29555", "-m", "bincounter", "train", "--train", str(train_dir), "--val", str(train_dir),
               "--model-dir", f"{tmp}/m", "--epochs", "2", "--image-size", str(a.image_size), "--no-pretrained",
               "--workers", "0", "--batch-size", str(a.batch_size // nproc), "--no-progress"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        hist = json.loads(Path(f"{tmp}/m/metrics.json").read_text())["history"]
        n = len(list(train_dir.rglob("*.jpg")))
        # epoch 2 (warm); epoch_time_s includes validation over the same images (forward only)
        return n / hist[-1]["epoch_time_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="efficientnet_b0")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--source-size", type=int, default=320, help="synthetic JPEG width")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--ddp", action="store_true", help="also 1 vs 2 gloo processes of the real trainer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--options", default="", help=f"comma-separated, each measured alone: {', '.join(OPTIONS)}")
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes")
    p.add_argument("--out", default="bench/results/train_pipeline.json")
    a = p.parse_args()
    if a.quick:
        a.steps, a.rounds, a.per_class, a.image_size, a.batch_size, a.source_size = 3, 1, 8, 64, 8, 128
    res = run(a)
    if a.ddp:
        res["ddp_1proc"] = ddp_rate(a, 1)
        res["ddp_2proc"] = ddp_rate(a, 2)
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    ratios = {"c/a": round(res["bincounter"] / res["limit"], 3), "c/b": round(res["bincounter"] / res["plain"], 3)}
    for k in res:
        if k.startswith("bincounter+"):
            opt = k.split("+", 1)[1]
            ratios[f"c/a+{opt}"] = round(res[k] / res[f"limit+{opt}"], 3)
    out = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
           "device": device, "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
           "args": vars(a), "images_per_s": {k: round(v, 2) for k, v in res.items()}, "ratios": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\n{a.arch} {a.image_size}px batch {a.batch_size}, {a.threads} threads, {a.workers} workers, "
          f"{out['machine']}, {device}")
    print(f"{'pipeline':<28}{'images/s':>10}")
    for k, v in res.items():
        print(f"{k:<28}{v:>10.1f}")
    print(f"ratio c/a (bincounter / limit) = {out['ratios']['c/a']:.2f}; c/b (bincounter / plain) = "
          f"{out['ratios']['c/b']:.2f}")
    for k, v in ratios.items():
        if "+" in k:
            print(f"ratio {k} = {v:.2f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

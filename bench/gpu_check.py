"""The CUDA paths, run for real on whatever GPUs are present; one table at the end, JSON in bench/results.

What it runs (each row says ok / FAILED / skipped with the reason, and its numbers):
  env         torch/CUDA versions, GPUs, compute capability, the autocast dtype the trainer picks
              (bf16 on capability >= 8, fp16 + GradScaler below)
  train       the real trainer (`bincounter.train.train`): AMP + channels_last at 224 px, DataLoader workers,
              a few hundred steps on synthetic bins; img/s of the last epoch, whether augmentation changed
              between epochs inside the persistent workers, val_acc
  torchrun    2+ GPUs: `torchrun --nproc_per_node=<GPUs>` of the same trainer over NCCL; checks the
              validation covered the split exactly once
  gpu_decode  bench/train_pipeline.py --options gpu_decode (nvJPEG decode on the GPU) vs the CPU loader
  predictor   Predictor latency at batch 1 and 8 (p50/p90 of timed calls after warm-up), fp32 like serving
  pinning     every serving worker's gpu_id -> the GPU its model lands on (worker_device + Predictor)
  int8_cpu    this machine's CPU, not its GPU (issue 25: INT8 pays off on VNNI/AMX CPUs, which the project's own
              machines mostly lack): the trained model exported to ONNX and quantized as `export --quantize int8` does
              (U8S8 reduce_range) and without reduce_range (what VNNI allows), images/s on one thread vs fp32,
              agreement with fp32 on the val images (32 of them also calibrated), the CPU's AVX2/VNNI/AMX
              flags (serving.onnx_runtime.cpu_flags); skipped without onnxruntime/onnx or with under 150 s left of
              gpu_check.sh's 480 s. The JSON is rewritten after every row, so a timeout keeps the rows that finished.

No Docker, no network. Under 8 minutes on one GPU:

    bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
    python bench/gpu_check.py --cpu-smoke   # the same code on the CPU, tiny sizes (checks the script itself)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bincounter.data.split import split_dataset  # noqa: E402
from bincounter.data.synth import synth_dataset  # noqa: E402
from bincounter.distributed import pick_device  # noqa: E402
from bincounter.engine import amp_dtype  # noqa: E402

ROWS: list[dict] = []
PARTIAL: list[Path] = []  # where to write the rows after each check (a timeout then keeps the finished ones)


def row(name: str):
    """Decorator: run a check, record ok/FAILED/skipped and its numbers, never stop the script."""
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.monotonic()
            try:
                out = fn(*a, **kw) or {}
                status = out.pop("_status", "ok")
            except Exception as e:  # noqa: BLE001 - a failed check is a row, the others still run
                out, status = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}, \
                    "FAILED"
                traceback.print_exc()
            r = {"check": name, "status": status, "seconds": round(time.monotonic() - t0, 1), **out}
            ROWS.append(r)
            print(f"[gpu_check] {name}: {status} {json.dumps(out)}", flush=True)
            for path in PARTIAL:
                path.write_text(json.dumps({"rows": ROWS, "partial": True}, indent=2))
            return r
        return run
    return wrap


@row("env")
def check_env(device: torch.device) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "gpus": torch.cuda.device_count()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        out["bf16_supported_says"] = torch.cuda.is_bf16_supported()
    out["autocast"] = str(amp_dtype(device)).replace("torch.", "")
    return out


def make_channels(root: Path, per_class: int, size: int) -> Path:
    synth_dataset(root / "abid", per_class, seed=0, size=size)
    split_dataset(root / "abid", root / "ch", val=0.2, test=0.0, seed=0)
    return root / "ch"


@row("train")
def check_train(ch: Path, out: Path, device: str, image_size: int, epochs: int, batch: int, workers: int) -> dict:
    # augmentation must differ between epochs inside persistent workers (the shared-memory epoch)
    from torch.utils.data import DataLoader

    from bincounter.data.dataset import ChannelDataset
    from bincounter.preprocess import Preprocess
    from bincounter.train import TrainConfig, train

    ds = ChannelDataset(ch / "train", Preprocess(64), train=True, seed=1)
    dl = DataLoader(torch.utils.data.Subset(ds, range(8)), batch_size=8, num_workers=min(2, workers),
                    persistent_workers=workers > 0)
    seen = []
    for e in (1, 2):
        ds.set_epoch(e)
        seen.append(next(iter(dl))[0])
    aug_changes = not torch.equal(seen[0], seen[1])

    r = train(TrainConfig(train_dir=str(ch / "train"), val_dir=str(ch / "val"), model_dir=str(out),
                          epochs=epochs, batch_size=batch, image_size=image_size, pretrained=False,
                          workers=workers, device=device, amp=True, channels_last=True, show_progress=False))
    last = r["history"][-1]
    n_train = len(ds)
    steps = epochs * -(-n_train // batch)
    return {"steps": steps, "img_per_s_last_epoch": round(n_train / last["epoch_time_s"], 1),
            "val_acc": round(last["val_acc"], 3), "train_loss": round(last["train_loss"], 4),
            "augmentation_changes_per_epoch": aug_changes,
            "_status": "ok" if aug_changes and all(map(lambda h: h["train_loss"] == h["train_loss"], r["history"]))
            else "FAILED"}


@row("torchrun")
def check_torchrun(ch: Path, out: Path, gpus: int, image_size: int, batch: int, cpu_smoke: bool) -> dict:
    nproc = 2 if cpu_smoke else gpus
    if nproc < 2:
        return {"_status": "skipped", "reason": f"{gpus} GPU: NCCL needs 2+ devices"}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29561",
           "-m", "bincounter", "train", "--train", str(ch / "train"), "--val", str(ch / "val"), "--model-dir",
           str(out), "--epochs", "2", "--image-size", str(image_size), "--batch-size", str(batch),
           "--no-pretrained", "--no-progress", "--device", "cpu" if cpu_smoke else "auto"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    m = json.loads((out / "metrics.json").read_text())
    n_val = len(list((ch / "val").rglob("*.jpg")))
    ok = m["world_size"] == nproc and all(h["val_n"] == n_val for h in m["history"])
    backend = "gloo" if cpu_smoke else "nccl"
    return {"world_size": m["world_size"], "backend": backend, "wall_s": round(time.monotonic() - t0, 1),
            "epoch_time_s": m["history"][-1]["epoch_time_s"], "val_n_exact": ok, "_status": "ok" if ok else "FAILED"}


@row("gpu_decode")
def check_gpu_decode(tmp: Path, cpu_smoke: bool) -> dict:
    if cpu_smoke:
        return {"_status": "skipped", "reason": "CUDA only"}
    res = tmp / "train_pipeline.json"
    cmd = [sys.executable, str(ROOT / "bench" / "train_pipeline.py"), "--device", "cuda", "--image-size", "224",
           "--batch-size", "64", "--workers", "8", "--steps", "10", "--rounds", "1", "--per-class", "40",
           "--options", "channels_last,bf16,gpu_decode", "--out", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"train_pipeline exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    got = json.loads(res.read_text())
    return {"images_per_s": got["images_per_s"], "ratios": got["ratios"]}


def _latencies(fn, n: int, warm: int = 5) -> dict:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return {"p50_ms": round(statistics.median(ts), 2), "p90_ms": round(ts[int(0.9 * (len(ts) - 1))], 2)}


@row("predictor")
def check_predictor(model_dir: Path, ch: Path, device: str, n: int) -> dict:
    from bincounter.evaluate import Predictor

    pred = Predictor(model_dir, device=device)
    images = [p.read_bytes() for p in sorted((ch / "val").rglob("*.jpg"))[:8]]

    def once(batch):
        pred.predict(batch)
        if pred.device.type == "cuda":
            torch.cuda.synchronize(pred.device)
    return {"device": str(pred.device), "batch1": _latencies(lambda: once(images[:1]), n),
            "batch8": _latencies(lambda: once(images), n)}


@row("pinning")
def check_pinning(model_dir: Path, gpus: int, cpu_smoke: bool) -> dict:
    if cpu_smoke or gpus < 1:
        return {"_status": "skipped", "reason": "no GPU"}
    from bincounter.evaluate import Predictor

    try:
        from bincounter.serving.inference import worker_device
    except ImportError as e:  # sagemaker-inference is not installed outside the image
        worker_device, note = None, f"worker_device not importable here ({e.name}); pick_device('cuda:N') checked"
    else:
        note = "worker_device + Predictor"

    class Ctx:
        def __init__(self, gpu_id):
            self.system_properties = {"gpu_id": gpu_id, "model_dir": str(model_dir)}

    landed = {}
    for gpu_id in range(gpus):
        dev = worker_device(Ctx(gpu_id)) if worker_device else str(pick_device(f"cuda:{gpu_id}"))
        pred = Predictor(model_dir, device=dev)
        landed[gpu_id] = next(pred.model.parameters()).device.index
    ok = all(landed[g] == g for g in landed)
    return {"worker_gpu_to_model_gpu": landed, "how": note, "_status": "ok" if ok else "FAILED"}


@row("int8_cpu")
def check_int8_cpu(model_dir: Path, ch: Path, cpu_smoke: bool, seconds_left: float) -> dict:
    if seconds_left < 150:
        return {"_status": "skipped", "reason": f"{seconds_left:.0f} s left of gpu_check.sh's 480 s"}
    try:
        import onnx  # noqa: F401 - the quantizer needs it
        import onnxruntime
    except ImportError as e:
        return {"_status": "skipped", "reason": f"{e.name} not installed"}
    import numpy as np
    from int8 import interleaved_speeds  # bench/int8.py, beside this script: the same timing

    from bincounter.artifact import ONNX, preprocess_of, read_config
    from bincounter.model import export_onnx
    from bincounter.quantize import DEFAULT, VNNI, channel_arrays, probabilities, quantize_bytes, session
    from bincounter.serving.onnx_runtime import cpu_flags

    export_onnx(model_dir)
    xs, _ = channel_arrays(ch / "val", preprocess_of(read_config(model_dir)), 8 if cpu_smoke else 64)
    configs = {"U8S8 reduce_range (export's)": DEFAULT,
               "U8S8 (no reduce_range: --for-cpu vnni)": VNNI}
    sessions = {"fp32": session(model_dir / ONNX, threads=1)}
    for name, settings in configs.items():
        sessions[name] = session(quantize_bytes(model_dir / ONNX, xs[:32], settings), threads=1)
    ref = probabilities(sessions["fp32"], xs).argmax(1)
    speeds = interleaved_speeds(sessions, np.ascontiguousarray(xs[:8]), 2 if cpu_smoke else 3,
                                0.2 if cpu_smoke else 1.5)
    out = {"cpu": next((ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
           "cpu_flags": cpu_flags(), "onnxruntime":
           onnxruntime.__version__, "images": int(len(xs)), "size": int(xs.shape[-1])}
    for name, sess in sessions.items():
        out[name] = {"images_per_s_1_thread": speeds[name]["images_per_s"],
                     "vs_fp32": round(speeds[name]["vs_fp32"], 2)}
        if name != "fp32":
            out[name]["agreement"] = round(float(np.mean(probabilities(sess, xs).argmax(1) == ref)), 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="run the script's code on the CPU, tiny sizes")
    p.add_argument("--per-class", type=int, default=400, help="synthetic bins per count (train is 80%%)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    args = p.parse_args()
    if args.cpu_smoke:
        args.per_class, args.epochs, args.batch_size, args.image_size = 6, 2, 8, 64
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible (use --cpu-smoke to check the script on a CPU)", file=sys.stderr)
            return 2
        device = pick_device("cuda")
    gpus = torch.cuda.device_count()
    workers = 2 if args.cpu_smoke else min(8, max(1, (os.cpu_count() or 2) // max(1, gpus) - 1))
    t_start = time.monotonic()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    PARTIAL.append(out)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        ch = make_channels(tmp, args.per_class, 320 if not args.cpu_smoke else 96)
        check_env(device)
        t = check_train(ch, tmp / "m", str(device), args.image_size, args.epochs, args.batch_size, workers)
        check_torchrun(ch, tmp / "m2", gpus, args.image_size, args.batch_size, args.cpu_smoke)
        check_gpu_decode(tmp, args.cpu_smoke)
        if t["status"] == "ok" or (tmp / "m" / "model.safetensors").exists():
            check_predictor(tmp / "m", ch, str(device), 10 if args.cpu_smoke else 50)
            check_pinning(tmp / "m", gpus, args.cpu_smoke)
            check_int8_cpu(tmp / "m", ch, args.cpu_smoke, 470 - (time.monotonic() - t_start))
    total = round(time.monotonic() - t_start, 1)
    print(f"\n{'check':<11} {'status':<8} {'s':>6}  numbers")
    for r in ROWS:
        nums = {k: v for k, v in r.items() if k not in ("check", "status", "seconds")}
        print(f"{r['check']:<11} {r['status']:<8} {r['seconds']:>6}  {json.dumps(nums)[:300]}")
    print(f"total {total} s")
    out.write_text(json.dumps({"rows": ROWS, "total_s": total, "cpu_smoke": args.cpu_smoke,
                               "host": platform.node()}, indent=2))
    print(f"wrote {out}")
    return 1 if any(r["status"] == "FAILED" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())

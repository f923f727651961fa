"""The two loops: one training epoch, and evaluation into a confusion matrix (exact across ranks)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import COUNTS
from .distributed import DistInfo, all_reduce_sum
from .progress import progress


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 on GPUs with native bf16 (compute capability >= 8: A10G, A100,
    L4, H100), fp16 (with a GradScaler) on older ones (T4 on g4dn, V100 on p3), None on CPU.
    `torch.cuda.is_bf16_supported()` is not the test: it is True on a T4 through slow emulation."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device: torch.device, enabled: bool):
    dtype = amp_dtype(device) if enabled else None
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _to_device(x, y, ok, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True), ok.to(device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, device, info: DistInfo, *,
                    epoch: int, label_smoothing: float, amp: bool, channels_last: bool,
                    frozen_params: list | None = None, scaler=None, show_progress: bool = True,
                    on_step=None, rules=None) -> dict:
    """Returns {"loss": mean over ranks, "skipped": bad images, "data_wait_s", "step_s"} (this rank's time
    spent waiting for the next batch vs. in the step: the input pipeline's share); `frozen_params` get no
    update; `on_step()` runs after every step (the profiler's hook); `rules` (rules.Rules) sees every step's
    loss, global gradient norm (after DDP's all-reduce: the same on every rank) and logits."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss_sum, n, skipped
    wait_s = step_s = 0.0
    with progress(len(loader), f"epoch {epoch} train", enabled=info.is_main and show_progress) as bar:
        t_ready = time.perf_counter()
        for i, (x, y, ok) in enumerate(loader):
            t_got = time.perf_counter()
            wait_s += t_got - t_ready
            x, y, ok = _to_device(x, y, ok, device, channels_last)
            with autocast(device, amp):
                logits = model(x)
            loss_each = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction="none")
            okf = ok.float()
            # mean over good samples; a batch of only bad images still runs backward (DDP needs it)
            loss = (loss_each * okf).sum() / okf.sum().clamp(min=1.0)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if frozen_params:
                for p in frozen_params:
                    p.grad = None
            if rules is not None and rules.enabled:
                if scaler is not None:
                    scaler.unscale_(optimizer)  # the true gradients; scaler.step knows they are unscaled
                grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(grads, float("inf")) if grads else None
                rules.step(epoch, i, loss.detach(), norm, logits, scaled=scaler is not None)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            totals += torch.stack([(loss_each.detach() * okf).sum().double(), okf.sum().double(),
                                   (1 - okf).sum().double()])
            bar.update(1)
            bar.set_postfix_str(f"loss={loss.item():.4f}")  # .item() syncs: step time is real time
            if on_step is not None:
                on_step()
            t_ready = time.perf_counter()
            step_s += t_ready - t_got
    all_reduce_sum(totals, info)
    return {"loss": (totals[0] / totals[1].clamp(min=1)).item(), "skipped": int(totals[2].item()),
            "data_wait_s": wait_s, "step_s": step_s}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, info: DistInfo, *, channels_last: bool = False,
             desc: str = "eval", show_progress: bool = True, return_probs: bool = False) -> dict:
    """Confusion matrices, summed loss and skipped-image count, summed over ranks (each rank holds a
    disjoint shard, so nothing is counted twice). Two decodings of the same probabilities: argmax (the most
    likely count) and the expected count rounded (what minimises squared error: RMSE is the count metric),
    with the squared error of the unrounded expected count. With `return_probs`, this rank's softmax outputs.
    Always fp32, like the server: the val/test numbers are the served model's, on GPU as on CPU."""
    model.eval()
    n = len(COUNTS)
    cm = torch.zeros(n * n, dtype=torch.float64, device=device)
    cm_exp = torch.zeros(n * n, dtype=torch.float64, device=device)
    extra = torch.zeros(3, dtype=torch.float64, device=device)  # loss_sum, skipped, sse of the expected count
    idx = torch.arange(n, dtype=torch.float32, device=device)
    probs = []
    with progress(len(loader), desc, enabled=info.is_main and show_progress) as bar:
        for x, y, ok in loader:
            x, y, ok = _to_device(x, y, ok, device, channels_last)
            logits = model(x).float()
            p = torch.softmax(logits, dim=1)
            if return_probs:
                probs.append(p.cpu())
            keep = ok.bool()
            loss = F.cross_entropy(logits[keep], y[keep], reduction="sum") if keep.any() else logits.sum() * 0
            ones = torch.ones(int(keep.sum()), dtype=torch.float64, device=device)
            cm.index_add_(0, y[keep] * n + logits.argmax(1)[keep], ones)
            expected = (p * idx).sum(1)  # in class-index units = items, the counts being consecutive
            cm_exp.index_add_(0, y[keep] * n + expected.round().long().clamp(0, n - 1)[keep], ones)
            sse = ((expected - y.float()) ** 2)[keep].sum()
            extra += torch.stack([loss.double(), (~keep).sum().double(), sse.double()])
            bar.update(1)
    all_reduce_sum(cm, info)
    all_reduce_sum(cm_exp, info)
    all_reduce_sum(extra, info)
    out = {"confusion_matrix": cm.view(n, n).round().long().cpu().numpy(),
           "confusion_matrix_expected": cm_exp.view(n, n).round().long().cpu().numpy(),
           "loss_sum": extra[0].item(), "skipped": int(extra[1].item()), "expected_sse": extra[2].item()}
    if return_probs:
        out["probs"] = torch.cat(probs).numpy() if probs else np.zeros((0, n))
    return out

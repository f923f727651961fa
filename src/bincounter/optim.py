"""The optimizer and the learning-rate schedule the trainer uses: AdamW without weight decay on norms and
biases, a linear warm-up then a cosine decay to 1% of the learning rate, stepped once per batch."""

from __future__ import annotations

import math

import torch
from torch import nn


def create_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on the weight matrices and kernels only (a decayed norm scale or bias only hurts)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def create_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: float,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: linear warm-up over `warmup_epochs`, then cosine decay to 1% of the lr at the last step."""
    total, warm = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

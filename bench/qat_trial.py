"""Does quantization-aware fine-tuning (QAT) bring INT8 closer to fp32 than post-training quantization alone?

A trial, not a product feature (docs/PERFORMANCE.md#vnni): a demo model of bench/int8.py (--workdir W: W/seedN)
fine-tuned EPOCHS more with torch.ao `FakeQuantize` on every convolution's and linear layer's weights (per
channel, symmetric, 7-bit: what export's reduce_range writes) and inputs (uint8, per tensor), batch norm frozen;
or, with `plain` as the 6th argument, the same fine-tuning without fake quantization (the control: the extra
epochs alone). Then the usual export and ONNX Runtime quantization (export's default), and on the held-out
channel: each model's drop from fp32 with its 95% noise and its agreement. Prints lines; writes OUTJSON.

    python bench/qat_trial.py W/seed0 W/holdout800/channels/test 3 1e-4 qat.json [plain]
"""
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, PerChannelMinMaxObserver

from bincounter.artifact import ONNX
from bincounter.model import export_onnx, load_artifact
from bincounter.quantize import DEFAULT, channel_arrays, compare, paired_drop, probabilities, quantize_bytes, session


class WeightFQ(nn.Module):
    def __init__(self):
        super().__init__()
        # ORT: int8 symmetric per channel, reduce_range -> [-64, 64], scale = max|w| / 64
        self.fq = FakeQuantize(observer=PerChannelMinMaxObserver, quant_min=-64, quant_max=64, dtype=torch.qint8,
                               qscheme=torch.per_channel_symmetric, ch_axis=0)

    def forward(self, w):
        return self.fq(w)


def add_qat(model):
    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            P.register_parametrization(m, "weight", WeightFQ())
            m.act_fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                    dtype=torch.quint8, qscheme=torch.per_tensor_affine)
            hooks.append(m.register_forward_pre_hook(lambda mod, args: (mod.act_fq(args[0]),) + args[1:]))
    return hooks


def strip_qat(model, hooks):
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and P.is_parametrized(m, "weight"):
            P.remove_parametrizations(m, "weight", leave_parametrized=False)
            del m.act_fq


def main():
    if len(sys.argv) < 6:
        raise SystemExit(__doc__)
    seed_dir, holdout, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[5]
    epochs, lr = int(sys.argv[3]), float(sys.argv[4])
    torch.manual_seed(0)
    model, config, pre = load_artifact(seed_dir / "model")
    counts = tuple(config["counts"])
    tx, ty = channel_arrays(seed_dir / "channels" / "train", pre)
    cal, _ = channel_arrays(seed_dir / "channels" / "val", pre, 100)
    hx, hy = channel_arrays(holdout, pre)
    base = session(seed_dir / "model" / ONNX, threads=2)
    hfp32 = probabilities(base, hx)
    base_int8 = probabilities(session(quantize_bytes(seed_dir / "model" / ONNX, cal, DEFAULT), threads=2), hx)
    res = {"n": len(hy), "fp32_acc": float((hfp32.argmax(1) == hy).mean()),
           "int8_acc": float((base_int8.argmax(1) == hy).mean())}
    plain = len(sys.argv) > 6 and sys.argv[6] == 'plain'
    hooks = [] if plain else add_qat(model)
    res['mode'] = 'plain' if plain else 'qat'
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # frozen statistics, as QAT does late in training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    X, Y = torch.from_numpy(tx), torch.from_numpy(ty)
    g = torch.Generator().manual_seed(0)
    steps = epochs * ((len(X) + 31) // 32)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for ep in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        tot = 0.0
        for i in range(0, len(X), 32):
            idx = perm[i:i + 32]
            x = X[idx]
            flip = torch.rand(len(x), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = loss_fn(model(x), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"epoch {ep}: loss {tot / len(X):.4f}", flush=True)
    model.eval()
    strip_qat(model, hooks)
    work = Path(out).with_suffix("")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(seed_dir / "model", work)
    export_onnx(work, model=model)
    q_fp32 = probabilities(session(work / ONNX, threads=2), hx)
    q_int8 = probabilities(session(quantize_bytes(work / ONNX, cal, DEFAULT), threads=2), hx)
    for name, probs, ref in (("base int8 vs fp32", base_int8, hfp32), ("qat fp32 vs fp32", q_fp32, hfp32),
                             ("qat int8 vs fp32", q_int8, hfp32), ("qat int8 vs qat fp32", q_int8, q_fp32)):
        d = paired_drop(hy, ref.argmax(1), probs.argmax(1))
        c = compare(ref, probs, hy, counts)
        res[name] = {"drop": d["accuracy_drop"], "se": d["accuracy_drop_se"], "agreement": 1 - c["changed_share"],
                     "acc": c["accuracy"]}
        print(f"{name}: drop {d['accuracy_drop']:+.4f} ± {1.96 * d['accuracy_drop_se']:.4f}, "
              f"agreement {1 - c['changed_share']:.3f}, acc {c['accuracy']:.4f}", flush=True)
    Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""One definition of the metric line and of the evaluation numbers.

The trainer prints one line per epoch, e.g.::

    epoch=3 train_loss=0.8123 val_loss=0.7011 val_acc=0.64 val_rmse=0.7483 best_val_acc=0.66 rules_fired=0 lr=0.0008 ...

and, after the last epoch and the end-of-run training rules, one final line with the run's values::

    final epoch=5 best_val_acc=0.66 rules_fired=2

`metric_definitions()` builds the SageMaker tuner/training-job regexes from the same key list, so the log
format and the regexes cannot drift apart. Each value matches `NUMBER`. The final line matches the regexes of
`FINAL_KEYS` (and no other): a job's last `rules_fired` is the count in rules.json, its last `best_val_acc`
the artifact's.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from . import COUNTS

EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_acc", "val_rmse", "best_val_acc", "rules_fired", "lr",
              "epoch_time_s")
#: What the tuner maximises: the val_acc of the best epoch so far, i.e. of the weights the artifact holds
#: (the last epoch's val_acc would rank a trial by a model it did not keep).
OBJECTIVE = "best_val_acc"
NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
#: The final line's keys: rules that judge the best model (never_predicted, collapsed) fire after the last epoch
#: line, so the tuner would otherwise never see them.
FINAL_KEYS = ("epoch", "best_val_acc", "rules_fired")
#: A whole epoch line, as documented in the README.
EPOCH_LINE_RE = re.compile(r"^epoch=\d+ " + " ".join(f"{k}=({NUMBER}|nan)" for k in EPOCH_KEYS[1:]) + "$")


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.6g}"


def format_epoch_line(values: dict) -> str:
    missing = [k for k in EPOCH_KEYS if k not in values]
    if missing:
        raise KeyError(f"epoch line lacks {missing}")
    return " ".join(f"{k}={_fmt(values[k])}" for k in EPOCH_KEYS)


def format_final_line(values: dict) -> str:
    return "final " + " ".join(f"{k}={_fmt(values[k])}" for k in FINAL_KEYS)


def metric_regex(key: str) -> str:
    if key not in EPOCH_KEYS:
        raise KeyError(key)
    # Only on epoch lines (other log lines may mention the same names). The space before the key keeps
    # e.g. "loss" from matching inside "val_loss". Plain syntax (no anchors, no look-behind), so it means
    # the same to SageMaker's metric parser as to Python's `re`.
    if key == "epoch":
        return r"epoch=(\d+) train_loss="
    return rf"epoch=\d+.* {key}=({NUMBER})"


def metric_definitions(keys=("train_loss", "val_loss", "val_acc", "val_rmse", OBJECTIVE, "rules_fired")) -> list[dict]:
    """SageMaker `MetricDefinitions` for the epoch line."""
    return [{"Name": k, "Regex": metric_regex(k)} for k in keys]


def confusion_matrix(labels, preds, n: int = len(COUNTS)) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def summarize_eval(ev: dict, counts=COUNTS) -> dict:
    """`summarize` of what engine.evaluate returns: the argmax decoding at the top level (accuracy, rmse,
    per-class recall, confusion matrix, loss) and the expected-count decoding under "expected_count" (the same
    numbers for the rounded expected count, plus the RMSE of the unrounded one)."""
    out = summarize(ev["confusion_matrix"], ev["loss_sum"], counts)
    exp = summarize(ev["confusion_matrix_expected"], None, counts)
    exp["rmse_unrounded"] = float(math.sqrt(ev["expected_sse"] / exp["n"])) if exp["n"] else float("nan")
    out["expected_count"] = {k: exp[k] for k in ("accuracy", "rmse", "rmse_unrounded", "per_class_recall",
                                                 "confusion_matrix")}
    return out


def summarize(cm: np.ndarray, loss_sum: float | None = None, counts=COUNTS) -> dict:
    """accuracy, count RMSE over the whole set, per-class recall (rows = truth, columns = prediction)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    counts_arr = np.asarray(counts, dtype=np.float64)
    err2 = (counts_arr[:, None] - counts_arr[None, :]) ** 2
    out = {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "rmse": float(math.sqrt((cm * err2).sum() / n)) if n else float("nan"),
        "per_class_recall": {str(c): (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None)
                             for i, c in enumerate(counts)},
        "confusion_matrix": cm.tolist(),
    }
    if loss_sum is not None:
        out["loss"] = float(loss_sum / n) if n else float("nan")
    return out


def plot_confusion(cm, path: str | Path, title: str = "Confusion matrix", counts=COUNTS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(counts)), [str(c) for c in counts])
    ax.set_yticks(range(len(counts)), [str(c) for c in counts])
    ax.set_xlabel("predicted count")
    ax.set_ylabel("true count")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (accuracy {acc:.3f}, n={cm.sum()})")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(summary: dict, out_dir: str | Path, stem: str, title: str | None = None) -> tuple[Path, Path]:
    """`<stem>_metrics.json` + `<stem>_confusion_matrix.png` in out_dir; the plot's title is `title` (what was
    evaluated, e.g. "test set"), by default "<stem> set"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / f"{stem}_metrics.json"
    j.write_text(json.dumps(summary, indent=2))
    png = plot_confusion(summary["confusion_matrix"], out_dir / f"{stem}_confusion_matrix.png",
                         title=title or f"{stem} set")
    return j, png


def format_summary(summary: dict) -> str:
    recall = " ".join(f"{c}:{r:.2f}" if r is not None else f"{c}:-"
                      for c, r in summary["per_class_recall"].items())
    line = (f"accuracy={summary['accuracy']:.4f} rmse={summary['rmse']:.4f} n={summary['n']} "
            f"recall[{recall}]")
    exp = summary.get("expected_count")
    if exp:
        line += (f"; expected count: accuracy={exp['accuracy']:.4f} rmse={exp['rmse']:.4f} "
                 f"(unrounded {exp['rmse_unrounded']:.4f})")
    return line


def plot_history(history: list[dict], path: str | Path, title: str = "training") -> Path:
    """Training curves: train/val loss, val accuracy (with the best epoch marked) and val RMSE per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(ep, [h["val_acc"] for h in history], "o-", color="C2")
    best = max(history, key=lambda h: (h["val_acc"], -h["val_loss"]))
    axes[1].plot([best["epoch"]], [best["val_acc"]], "*", ms=14, color="C3", label=f"best (epoch {best['epoch']})")
    axes[1].axhline(1 / len(COUNTS), ls=":", color="grey", label="chance")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("val accuracy")
    axes[1].legend()
    axes[2].plot(ep, [h["val_rmse"] for h in history], "o-", color="C4")
    axes[2].set_title("val RMSE (items)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

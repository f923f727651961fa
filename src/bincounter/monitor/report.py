"""The verdict on disk: VERDICT (JSON, for machines: a scheduler's alarm, a pipeline's condition) and PAGE (one
self-contained HTML page for people: the verdict, then per signal the baseline's and the window's fractions per
bin as bars, embedded as base64 PNGs so the file can be attached to a ticket on its own)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .signals import DESCRIPTIONS

VERDICT = "drift.json"
PAGE = "drift.html"


def write(verdict: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERDICT).write_text(json.dumps(verdict, indent=1, allow_nan=False))
    (out / PAGE).write_text(page(verdict))
    return out / VERDICT, out / PAGE


def _plot(row: dict) -> str:
    """The signal's bars (baseline vs window per bin) as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bins = row["bins"]
    x = np.arange(len(bins["labels"]))
    fig, ax = plt.subplots(figsize=(7, 2.8), dpi=80)
    ax.bar(x - 0.2, bins["baseline"], 0.4, label="baseline (val split)", color="#7a9cc6")
    ax.bar(x + 0.2, bins["window"], 0.4, label="captured window", color="#d9534f" if row["drift"] else "#5cb85c")
    ax.set_xticks(x, bins["labels"], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("fraction")
    ax.set_title(row["signal"], fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _value(row: dict) -> str:
    if row["value"] is None:
        return row.get("note", "-")
    if row["statistic"] == "chi2_p":
        return (f"chi-square p = {row['value']:.3g} (drift below {row['threshold']:g}; chi2 {row['chi2']:.1f}, "
                f"df {row['df']}; PSI {row['psi']:.3f})")
    mean = (f"; mean {row['baseline_mean']:.4g} -> {row['window_mean']:.4g}"
            if row.get("baseline_mean") is not None else "")
    return (f"PSI = {row['value']:.3f} (drift at {row['threshold']:g}; sampling noise ~{row['noise_floor']:.3f})"
            f"{mean}")


def page(verdict: dict) -> str:
    e = html.escape
    color = {"drift": "#d9534f", "ok": "#5cb85c"}.get(verdict["status"], "#f0ad4e")
    win = verdict.get("window", {})
    head = (f"<h1>Drift watch: {e(str(verdict.get('endpoint', '')))}</h1>"
            f"<p style='font-size:1.3em;color:{color}'><b>{e(verdict['status'].upper())}</b>"
            f"{': ' + e(', '.join(verdict['drifted'])) if verdict['drifted'] else ''}</p>"
            f"<p>window {e(str(win.get('since')))} to {e(str(win.get('until')))}: {verdict['n_window']} images "
            f"from {win.get('records', 0)} captured requests in {win.get('files', 0)} files "
            f"(at least {verdict['min_samples']} needed to judge); {win.get('errors', 0)} error answers; skipped: "
            f"{e(json.dumps(win.get('skipped', {})))}</p>"
            f"<p>baseline: model {e(str(verdict.get('baseline', {}).get('model_version')))}, "
            f"{e(str(verdict.get('baseline', {}).get('images')))} val images; answers in the window from models "
            f"{e(json.dumps(win.get('model_versions', {})))}</p>")
    notes = "".join(f"<p style='color:#f0ad4e'>{e(n)}</p>" for n in verdict.get("notes", []))
    rows = []
    for r in verdict["signals"]:
        state = "DRIFT" if r["drift"] else "warning" if r["warning"] else "ok"
        img = f"<img src='data:image/png;base64,{_plot(r)}'>" if r.get("bins") else ""
        rows.append(f"<h2>{e(r['signal'])}: {state}</h2><p>{e(DESCRIPTIONS.get(r['signal'], ''))}. "
                    f"{e(_value(r))}; n = {r['n_window']} (baseline {r['n_baseline']})</p>{img}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bincounter drift</title></head>"
            f"<body style='font-family:sans-serif;max-width:900px'>{head}{notes}{''.join(rows)}</body></html>")

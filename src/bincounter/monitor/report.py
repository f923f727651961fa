"""The verdict on disk: VERDICT (JSON, for machines: a scheduler's alarm, a pipeline's condition) and PAGE (one
self-contained HTML page for people: the verdict, a line per signal, then one figure of the baseline's and the
window's fractions per bin for every signal, embedded as a base64 PNG so the file can be attached to a ticket)."""

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


def _plot(rows: list[dict]) -> str:
    """Every signal's bars (baseline vs window per bin) in one figure, as a base64 PNG (one figure: one draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = 2
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(11, 2.6 * lines), dpi=72, squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        bins = row["bins"]
        x = np.arange(len(bins["labels"]))
        ax.bar(x - 0.2, bins["baseline"], 0.4, label="baseline (val split)", color="#7a9cc6")
        ax.bar(x + 0.2, bins["window"], 0.4, label="captured window", color="#d9534f" if row["drift"] else "#5cb85c")
        ax.set_xticks(x, bins["labels"], rotation=30, ha="right", fontsize=6)
        ax.set_title(f"{row['signal']}{' (DRIFT)' if row['drift'] else ''}", fontsize=9)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.95, bottom=0.08, hspace=0.9, wspace=0.15)  # no 2nd draw
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
        rows.append(f"<h2>{e(r['signal'])}: {state}</h2><p>{e(DESCRIPTIONS.get(r['signal'], ''))}. "
                    f"{e(_value(r))}; n = {r['n_window']} (baseline {r['n_baseline']})</p>")
    plotted = [r for r in verdict["signals"] if r.get("bins")]
    img = (f"<h2>Baseline and window, per bin</h2><img style='max-width:100%' src='data:image/png;base64,"
           f"{_plot(plotted)}'>" if plotted else "")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bincounter drift</title></head>"
            f"<body style='font-family:sans-serif;max-width:900px'>{head}{notes}{''.join(rows)}{img}</body></html>")

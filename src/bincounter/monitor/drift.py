"""The comparison, pure (numpy only): a baseline's summaries against a window's values -> a verdict.

Numeric signals (signals.NUMERIC): the baseline keeps decile edges of its values (plus its minimum and just above
its maximum, so a window below or above everything the baseline saw lands in a bin of its own); the window is
binned on the same edges and compared with the Population Stability Index,
    PSI = sum_i (w_i - b_i) * ln(w_i / b_i)      (fractions floored at EPS),
drift when PSI >= the threshold (default 0.25, the usual "significant shift"; 0.1-0.25 is reported as a warning).
Sampling noise alone gives PSI ~ (1/n_window + 1/n_baseline) * chi2(bins - 1), mean (bins - 1) * (1/n_window +
1/n_baseline), the "noise floor": a small baseline (or window) makes it large, so a signal is judged against
max(threshold, NOISE_MARGIN x noise floor) (NOISE_MARGIN 2.5: chi2 with 11 degrees of freedom passes 2.5x its mean
with p ~ 0.004, so no drift gives a false alarm per signal well under 1%), and the verdict states both. Below
MIN_BASELINE values a baseline leaves deciles empty (PSI then measures the empty bins, not drift): such a signal is
not judged, and its row says so.

The predicted-count mix (signals.COUNT): a chi-square test of homogeneity on the 2 x k table (baseline counts,
window counts), drift when its p-value < the threshold (default 0.01). It uses both sample sizes, so a small val
split does not make the test over-eager; on very large windows it flags small shifts, whose size the PSI (also
reported) tells.
"""

from __future__ import annotations

import math

import numpy as np

from .signals import COUNT, NUMERIC

EPS = 1e-4
DECILES = tuple(i / 10 for i in range(1, 10))
DEFAULT_THRESHOLDS = {**dict.fromkeys(NUMERIC, 0.25), COUNT: 0.01}
WARN_PSI = 0.1
NOISE_MARGIN = 2.5
MIN_BASELINE = 50  # ~5 values per bin of the 12
#: the statistic each signal is judged by
STATISTIC = {**dict.fromkeys(NUMERIC, "psi"), COUNT: "chi2_p"}


def summarize_numeric(values) -> dict:
    """A numeric signal of the baseline: its bin edges and fractions, mean and standard deviation."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"kind": "numeric", "n": 0, "edges": [], "fractions": [1.0], "mean": None, "std": None}
    inner = np.quantile(v, DECILES)
    edges = np.unique(np.concatenate([[v.min()], inner, [np.nextafter(v.max(), np.inf)]]))
    return {"kind": "numeric", "n": int(v.size), "edges": edges.tolist(), "fractions": fractions(edges, v).tolist(),
            "mean": float(v.mean()), "std": float(v.std())}


def summarize_counts(values, categories) -> dict:
    """The categorical signal: how many of each category (predicted count)."""
    counts = [sum(1 for x in values if x == c) for c in categories]
    n = sum(counts)
    return {"kind": "categorical", "n": n, "categories": list(categories), "counts": counts,
            "fractions": [c / n if n else 0.0 for c in counts]}


def fractions(edges, values) -> np.ndarray:
    """Fractions of `values` in the bins (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")
    hist = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return hist / max(v.size, 1)


def psi(expected, actual) -> float:
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer `df` degrees of freedom (closed forms; no scipy)."""
    if df <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    s = math.sqrt(x)
    total = math.erfc(s / math.sqrt(2))
    term = math.sqrt(2 / math.pi) * math.exp(-half) * s
    for i in range(1, (df + 1) // 2):
        total += term
        term *= x / (2 * i + 1)
    return min(1.0, total)


def chi2_homogeneity(base_counts, window_counts) -> tuple[float, int, float]:
    """Chi-square test of homogeneity on the 2 x k table -> (statistic, degrees of freedom, p-value); categories
    empty in both samples are left out."""
    table = np.array([base_counts, window_counts], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    df = table.shape[1] - 1
    return stat, df, chi2_sf(stat, df)


def compare_signal(name: str, base: dict, values: list, threshold: float) -> dict:
    """One signal of the baseline against the window's values -> its row of the verdict."""
    row = {"signal": name, "statistic": STATISTIC[name], "threshold": threshold, "n_baseline": base["n"],
           "n_window": len(values)}
    if not values or not base["n"]:
        return {**row, "value": None, "drift": False, "warning": False, "note": "no values to compare"}
    if base["kind"] == "categorical":
        cats = base["categories"]
        window = [sum(1 for x in values if x == c) for c in cats]
        other = len(values) - sum(window)  # a count the baseline has no category for
        stat, df, p = chi2_homogeneity([*base["counts"], 0], [*window, other])
        wfrac = [w / len(values) for w in [*window, other]]
        return {**row, "value": p, "chi2": stat, "df": df, "drift": p < threshold, "warning": p < threshold,
                "psi": psi([*base["fractions"], 0.0], wfrac),
                "bins": {"labels": [str(c) for c in cats] + ["other"], "baseline": [*base["fractions"], 0.0],
                         "window": wfrac}}
    if base["n"] < MIN_BASELINE:
        return {**row, "value": None, "drift": False, "warning": True,
                "note": f"not judged: a baseline of {base['n']} values leaves its decile bins empty (needs "
                        f"{MIN_BASELINE}; the val split writes up to 2000)"}
    edges = base["edges"]
    wfrac = fractions(edges, values)
    value = psi(base["fractions"], wfrac)
    nbins = len(edges) + 1
    floor = (nbins - 1) * (1 / len(values) + 1 / base["n"])
    judged_at = max(threshold, NOISE_MARGIN * floor)
    extra = {} if judged_at == threshold else {
        "note": f"sampling noise alone gives PSI ~{floor:.2g} with {base['n']} baseline and {len(values)} window "
                f"values: judged at {judged_at:.2g}, not {threshold:g} (a larger baseline or window sharpens it)"}
    return {**row, **extra, "value": value, "drift": value >= judged_at,
            "warning": value >= min(WARN_PSI, threshold) and value < judged_at or bool(extra),
            "noise_floor": floor, "judged_at": judged_at,
            "baseline_mean": base["mean"], "window_mean": float(np.mean(values)),
            "bins": {"labels": _labels(edges), "baseline": list(base["fractions"]), "window": wfrac.tolist()}}


def _labels(edges) -> list[str]:
    e = [f"{x:.3g}" for x in edges]
    return [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:], strict=False)] + [f">={e[-1]}"]


def compare(baseline: dict, window: dict[str, list], thresholds: dict[str, float] | None = None,
            min_samples: int = 100) -> dict:
    """Every signal of `baseline["signals"]` against the window's values -> the verdict: status "drift" (some
    signal past its threshold), "ok", or "insufficient_data" (fewer than `min_samples` captured images)."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    rows = [compare_signal(name, base, window.get(name, []), th[name])
            for name, base in baseline["signals"].items() if name in th]
    n = max((len(window.get(s, [])) for s in baseline["signals"]), default=0)
    drifted = [r["signal"] for r in rows if r["drift"]]
    status = "insufficient_data" if n < min_samples else "drift" if drifted else "ok"
    return {"status": status, "drift": status == "drift", "drifted": drifted if status != "insufficient_data" else [],
            "warnings": [r["signal"] for r in rows if r["warning"] and not r["drift"]], "n_window": n,
            "min_samples": min_samples, "signals": rows}

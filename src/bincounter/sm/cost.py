"""The estimated cost line every job command prints before its request (dry run or real), from the dated
price table next to this module (`prices.json`, read only here) or `--price-per-hour`.

Training and tuning are bounded by their maximum runtime, so the line is an upper bound ("up to"); endpoints
and batch transform bill per hour while they exist, so the line is a rate.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

_TABLE = Path(__file__).with_name("prices.json")


@functools.cache
def table() -> dict:
    return json.loads(_TABLE.read_text())


def instance_types() -> list[str]:
    """The instance types the commands offer (priced in the table)."""
    return list(table()["instances"])


def gpus(instance_type: str) -> int | None:
    """GPUs per instance (None: not in the table)."""
    entry = table()["instances"].get(instance_type)
    return None if entry is None else entry["gpus"]


def _rate(instance_type: str, override: float | None) -> tuple[float | None, str]:
    t = table()
    if override is not None:
        return override, f"${override:.3f}/h from --price-per-hour"
    entry = t["instances"].get(instance_type)
    if entry is None:
        return None, ""
    return entry["usd_per_hour"], f"${entry['usd_per_hour']:.3f}/h"


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _unknown(instance_type: str) -> str:
    return (f"estimated cost: unknown ({instance_type} is not in the price table of {table()['as_of']}; "
            "pass --price-per-hour)")


def _where(region: str | None, override: float | None) -> str:
    t = table()
    if override is not None:
        return ""
    other = f"; {region} may differ" if region and region != t["region"] else ""
    return f"; {t['region']} prices of {t['as_of']}{other}"


def job_line(*, instance_type: str, instance_count: int, max_runtime_s: int, jobs: int = 1, spot: bool = False,
             price_per_hour: float | None = None, region: str | None = None) -> str:
    """Training (jobs=1) or tuning (jobs=max jobs): an upper bound from the maximum runtime."""
    rate, rate_text = _rate(instance_type, price_per_hour)
    if rate is None:
        return _unknown(instance_type)
    hours = max_runtime_s / 3600
    total = jobs * instance_count * hours * rate
    parts = ([f"{jobs} jobs"] if jobs > 1 else []) + [f"{instance_count} {instance_type}", f"{hours:g} h", rate_text]
    line = f"estimated cost: up to {_money(total)} ({' x '.join(parts)}"
    if spot:
        lo, hi = table()["spot_saving"]
        line += (f"; spot: {lo * 100:.0f}-{hi * 100:.0f}% less, about "
                 f"{_money(total * (1 - hi))}-{_money(total * (1 - lo))}")
    return line + _where(region, price_per_hour) + ")"


def hourly_line(*, what: str, instance_type: str, instance_count: int, max_count: int | None = None,
                price_per_hour: float | None = None, region: str | None = None) -> str:
    """Endpoints and batch transform: a rate while they exist/run."""
    rate, rate_text = _rate(instance_type, price_per_hour)
    if rate is None:
        return _unknown(instance_type)
    per_hour = instance_count * rate
    line = f"estimated cost: {_money(per_hour)}/h {what} ({instance_count} {instance_type} x {rate_text}"
    if what.startswith("while the endpoint"):
        line += f"; {_money(per_hour * 24 * 30)} per 30 days"
    if max_count and max_count > instance_count:
        line += f"; up to {_money(max_count * rate)}/h at {max_count} instances"
    return line + _where(region, price_per_hour) + ")"


def serverless_line(*, memory_mb: int, max_concurrency: int, region: str | None = None) -> str:
    """Serverless endpoints: billed per second of inference by memory size, plus data processed; no idle cost.
    The hourly figure is the ceiling: every one of max_concurrency slots busy for the whole hour."""
    t = table()["serverless"]
    per_s = memory_mb / 1024 * t["usd_per_gb_second"]
    return (f"estimated cost: serverless {memory_mb} MB: ${per_s:.6f} per second of inference "
            f"({_money(per_s * 3600 * max_concurrency)}/h with {max_concurrency} requests always in flight) + "
            f"${t['usd_per_gb_processed']:.3f} per GB in/out; nothing while idle" + _where(region, None))


SERVERLESS_MEMORY_MB = tuple(range(1024, 6145, 1024))  # what SageMaker serverless accepts (--serverless checks it)


def per_million_on_instances(rps_per_vcpu: float) -> list[dict]:
    """$ per million predictions on each CPU instance type of the table, from a measured req/s per vCPU (assumed
    to scale with the instance's vCPUs: one ONNX Runtime worker per core), cheapest first."""
    if rps_per_vcpu <= 0:
        return []
    rows = []
    for name, e in table()["instances"].items():
        if e["gpus"]:
            continue
        rps = rps_per_vcpu * e["vcpus"]
        rows.append({"instance_type": name, "vcpus": e["vcpus"], "usd_per_hour": e["usd_per_hour"], "rps": rps,
                     "usd_per_million": e["usd_per_hour"] / (rps * 3600) * 1e6})
    return sorted(rows, key=lambda r: (r["usd_per_million"], r["usd_per_hour"]))


def per_million_serverless(rss_mib: float, seconds_per_request: float, request_bytes: int,
                           headroom: float = 1.25) -> dict:
    """$ per million predictions on a serverless endpoint: the smallest memory size that holds the measured RSS
    with `headroom`, billed per second of inference, plus the data processed (the request; answers are tiny)."""
    need = rss_mib * headroom
    memory = next((m for m in SERVERLESS_MEMORY_MB if m >= need), None)
    if memory is None:
        return {"memory_mb": None, "why": f"{need:.0f} MiB needed: above serverless' {SERVERLESS_MEMORY_MB[-1]} MB"}
    t = table()["serverless"]
    compute = memory / 1024 * t["usd_per_gb_second"] * seconds_per_request * 1e6
    data = request_bytes / 1e9 * t["usd_per_gb_processed"] * 1e6
    return {"memory_mb": memory, "compute_usd_per_million": compute, "data_usd_per_million": data,
            "usd_per_million": compute + data}

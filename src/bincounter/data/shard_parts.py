"""Index parts -> one index: the sharded channel that several machines wrote (the pipeline's Shard step on N
instances, each `shards.write_samples` with its own shard names and an index part) as the one `index.json` the
trainer reads."""

from __future__ import annotations

from .. import COUNTS
from ..errors import DataError
from .shards import FORMAT


def combine_indexes(parts: list[dict]) -> dict:
    """Index parts of one split (`write_samples` on several machines, shards named apart) -> the one index of the
    channel: shards in name order, samples/counts/bytes summed."""
    splits = {p.get("split") for p in parts}
    if len(splits) != 1 or any(p.get("format") != FORMAT for p in parts):
        raise DataError(f"index parts of different splits or formats ({sorted(map(str, splits))}) cannot combine")
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["name"])
    if len({s["name"] for s in shards}) != len(shards):
        raise DataError("index parts name the same shard twice; each part must name its shards apart")
    return {"format": FORMAT, "split": splits.pop(), "samples": sum(s["samples"] for s in shards),
            "counts": [sum(s["counts"][c] for s in shards) for c in range(len(COUNTS))],
            "bytes": sum(s["bytes"] for s in shards), "shard_size": max(p["shard_size"] for p in parts),
            "seed": parts[0]["seed"], "shards": shards}

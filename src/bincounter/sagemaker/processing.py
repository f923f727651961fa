"""`docker run IMAGE process prepare|evaluate`: the image as a SageMaker Processing job (the pipeline's
Prepare and Evaluate steps; `bincounter process ...` runs the same code on any machine).

Processing contract: inputs are copied under /opt/ml/processing/<name>, outputs are uploaded from the
directories the job definition names, a failure's reason goes to /opt/ml/output/message (ExitMessage).

    prepare   raw ABID (bin-images/ + metadata/)  -> OUT/channels/{train,val,test} + manifest.csv, OUT/eda/
    plan      ABID metadata/ only (the pipeline's light Prepare) -> OUT/manifest/manifest.csv (id,count,split)
              + parts.json (each part's bins and checksum),
              OUT/parts/part-NNNNN.csv (a random mix of every split, PART_SIZE bins each), OUT/eda/
    shard     the manifest parts this instance got (ShardedByS3Key) + the raw source (s3:// or a directory)
              -> OUT/shards/<split>/<split>-pNNNNN-NNNNNN.tar, OUT/index-parts/<split>/part-NNNNN.json,
              OUT/index-parts/skips/part-NNNNN.json (bad images of that part by reason, its checksum, its splits);
              a failed download (not a 404) fails the part, a 404 counts as "not in the bucket"
    index     the index parts of the manifest's parts -> OUT/<split>/index.json (what the trainer reads, next to
              the shards) + OUT/summary/summary.json (bins sharded per split, bad images summed by reason);
              refuses when more than --max-bad-fraction of the bins were bad
    evaluate  a model (dir, or model.tar.gz from a training job) + a test channel
              -> OUT/evaluation.json (SageMaker model-metrics layout + bincounter's full report), confusion PNG
    monitor   the drift check of an endpoint's capture (bincounter.monitor.check, flags in cli/sm_monitor.py; what
              `sm monitor --schedule` runs): drift.json + drift.html, exit 1 on drift
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from .. import COUNTS
from ..errors import DataError, UserError

log = logging.getLogger(__name__)
BASE = Path("/opt/ml/processing")
EVALUATION = "evaluation.json"
PARTS_JSON = "parts.json"  # plan: the manifest's parts (bins, checksum), what `index` combines


def prepare(raw: str | Path, out: str | Path, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict:
    """EDA report + stratified split of a raw ABID directory. -> {"channels": {split: dir}, "eda": dir}."""
    from ..data import eda, split

    raw, out = Path(raw), Path(out)
    index = eda.run(raw, out / "eda")
    splits = split.run(raw, out / "channels", val=val, test=test, seed=seed)
    for s in split.SPLITS:
        if not splits[s]:
            raise UserError(f"{raw}: the {s} split is empty ({sum(len(v) for v in splits.values())} usable bins); "
                            "prepare needs more bins per count")
    log.info("eda report: %s", index)
    return {"channels": {s: str(out / "channels" / s) for s in split.SPLITS}, "eda": str(out / "eda")}


PART_SIZE = 2000  # bins per manifest part: 268 parts for ABID's 535k, so up to 268 sharding instances


def plan(raw: str | Path, out: str | Path, val: float = 0.1, test: float = 0.1, seed: int = 0,
         part_size: int = PART_SIZE) -> dict:
    """The light Prepare: EDA of the metadata and the stratified split from it, no image read. The manifest's
    rows, shuffled (seeded), are cut into parts of `part_size`: each part is a random mix of every split, so
    however the parts are spread over instances each one writes shards of train, val and test."""
    from ..data import eda, split

    raw, out = Path(raw), Path(out)
    if part_size < 1:
        raise UserError(f"--part-size {part_size}: at least 1")
    eda.run(raw, out / "eda", metadata_only=True)
    splits, skips = split.split_metadata(raw, val=val, test=test, seed=seed)
    for s in split.SPLITS:
        if not splits[s]:
            raise UserError(f"{raw}: the {s} split is empty; the split needs more bins per count")
    rows = sorted((b.id, b.count, s) for s in split.SPLITS for b in splits[s])
    (out / "manifest").mkdir(parents=True, exist_ok=True)
    _write_rows(out / "manifest" / "manifest.csv", rows)
    random.Random(seed).shuffle(rows)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    n_parts = math.ceil(len(rows) / part_size)
    named = {}
    for k in range(n_parts):
        chunk = sorted(rows[k * part_size:(k + 1) * part_size])
        _write_rows(parts / f"part-{k:05d}.csv", chunk)
        named[f"{k:05d}"] = {"bins": len(chunk), "sha256": _sha256(parts / f"part-{k:05d}.csv")}
    (out / "manifest" / PARTS_JSON).write_text(json.dumps({"parts": named}, indent=1))
    summary = {"bins": len(rows), "parts": n_parts, "per_split": {s: len(splits[s]) for s in split.SPLITS},
               "metadata_skips": dict(skips.reasons)}
    (out / "eda" / "plan.json").write_text(json.dumps(summary, indent=1))
    log.info("%d bins in %d manifest parts; %s", len(rows), n_parts, skips.summary())
    return summary


def _write_rows(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "count", "split"])
        w.writerows(rows)


def _source(source: str) -> tuple[str | None, str]:
    """--source: s3://bucket[/prefix] -> (bucket, "prefix/"), a directory -> (None, dir)."""
    if source.startswith("s3://"):
        from ..data.s3 import parse_s3_uri

        bucket, prefix = parse_s3_uri(source)
        return bucket, f"{prefix}/" if prefix else ""
    if not Path(source, "metadata").is_dir():
        raise UserError(f"--source {source}: neither s3:// nor a raw ABID directory (metadata/ + bin-images/)")
    return None, source


def host_slice(items: list, config: Path = Path("/opt/ml/config/resourceconfig.json")) -> list:
    """This host's share of `items` (every n-th from its position in the job's hosts): for an executor that gives
    every instance every input (SageMaker's local mode ignores ShardedByS3Key)."""
    try:
        rc = json.loads(config.read_text())
        hosts = sorted(rc["hosts"])
        i = hosts.index(rc["current_host"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--slice-by-host: {config} does not name this host among the job's hosts ({e})") from None
    return items[i::len(hosts)]


def _current_host(config: Path = Path("/opt/ml/config/resourceconfig.json")) -> str | None:
    try:
        return json.loads(config.read_text())["current_host"]
    except (OSError, ValueError, KeyError):
        return None


NOT_IN_BUCKET = "not in the bucket"  # a bin whose image the bucket does not hold (404): counted, not fatal
FETCH_PASSES, PASS_BACKOFF_S = 3, (10.0, 60.0)  # whole fetch passes over a part's failures, the waits between
MAX_BAD_FRACTION = 0.05  # `index` refuses when more of the manifest's bins than this were bad


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_part(k: str, scratch: Path, ids: list[str], bucket: str, prefix: str, client, workers: int) -> set:
    """Fetch a part's bins into `scratch`; failures other than a missing key (throttling past botocore's retries,
    5xx, AccessDenied, broken streams) get more passes (the ledger skips what is complete) and then fail the part:
    a lost download is never counted as a bad image. -> the bin ids whose image the bucket does not hold."""
    from ..data import s3

    for attempt in range(1, FETCH_PASSES + 1):
        report = s3.fetch(scratch, ids, bucket=bucket, client=client, workers=workers, prefix=prefix)
        log.info("part %s (pass %d): %s", k, attempt, report.summary())
        errors = report.errors()
        if not errors:
            break
        if attempt < FETCH_PASSES:
            wait = PASS_BACKOFF_S[min(attempt, len(PASS_BACKOFF_S)) - 1]
            log.warning("part %s: %d files failed (%s); pass %d in %.0f s", k, len(errors),
                        next(iter(errors.values())), attempt + 1, wait)
            time.sleep(wait)
    else:
        reasons = Counter(v.split(":")[0] if not v.startswith("error: ") else v[7:].split(":")[0]
                          for v in errors.values())
        key, why = next(iter(sorted(errors.items())))
        raise DataError(f"part {k}: {len(errors)} of {2 * len(ids)} files failed to download from s3://{bucket}/"
                        f"{prefix} after {FETCH_PASSES} passes ({', '.join(f'{n} {r}' for r, n in reasons.items())}"
                        f"; e.g. {key}: {why}); not counted as bad images: rerun the step (in a pipeline: retry "
                        "the execution, RetryPipelineExecution; step retry policies do not rerun a failed job)")
    meta = sorted(m for m in report.missing if m.startswith("metadata/"))
    if meta:
        log.warning("part %s: %d bins have no metadata in the bucket (e.g. %s); sharded without it", k, len(meta),
                    meta[0])
    return {Path(m).stem for m in report.missing if m.startswith("bin-images/")}


def shard(parts: str | Path, source: str, out: str | Path, shard_size: int, workers: int = 32,
          endpoint_url: str | None = None, slice_by_host: bool = False, manifest: str | Path | None = None) -> dict:
    """Every manifest part under `parts` (this instance's slice): fetch its bins from `source` with the parallel,
    retried fetch (or read them from a directory), check each image as `data split` does, and write its shards
    and index parts. Shard names carry the part number, so instances never collide and the result does not
    depend on how many instances ran. A download that fails (not a 404) fails the part (`_fetch_part`); an
    image the bucket does not hold counts as "not in the bucket". Each part's record (index-parts/skips/) names
    the part's checksum and the splits it wrote, so `index` uses only the parts of its own manifest. With
    `manifest` (plan's folder), parts it does not name (left by an earlier plan under the same output) are skipped.
    -> {"parts", "bins", "skips"} of this instance."""
    from ..data import s3
    from ..data.shards import write_samples
    from ..preprocess import decode

    out, parts = Path(out), sorted(Path(parts).rglob("part-*.csv"))
    if manifest is not None:
        named = _manifest_parts(Path(manifest))
        mine = [p for p in parts if named.get(p.stem.split("-")[1], {}).get("sha256") == _sha256(p)]
        if len(mine) < len(parts):
            log.warning("skipped %d manifest parts that %s does not name (an earlier plan's)", len(parts) - len(mine),
                        manifest)
        parts = mine
    if slice_by_host:
        parts = host_slice(parts)
    host = _current_host()
    bucket, where = _source(source)
    client = s3.s3_client(endpoint_url=endpoint_url, max_pool=workers) if bucket else None
    total, skips = Counter(), Counter()
    for part in parts:
        k = part.stem.split("-")[1]
        with open(part, newline="") as f:
            rows = [(r["id"], int(r["count"]), r["split"]) for r in csv.DictReader(f)]
        scratch = Path(tempfile.mkdtemp(prefix=f"part-{k}-", dir=out.parent))
        try:
            absent = _fetch_part(k, scratch, [r[0] for r in rows], bucket, where, client, workers) if bucket else set()
            root = scratch if bucket else Path(where)
            samples: dict[str, list] = {}
            mine = Counter()
            for bid, count, split_name in rows:
                img = root / "bin-images" / f"{bid}.jpg"
                if bid in absent:
                    mine[NOT_IN_BUCKET] += 1
                    continue
                try:
                    decode(img.read_bytes(), 64)
                except FileNotFoundError:
                    mine["missing image"] += 1
                    continue
                except Exception:  # noqa: BLE001 - any decoder failure: a corrupt image, counted
                    mine["corrupt image"] += 1
                    continue
                samples.setdefault(split_name, []).append((img, COUNTS.index(count)))
            for split_name, items in samples.items():
                write_samples(items, out / "shards" / split_name, shard_size=shard_size, metadata_dir=root,
                              stem=f"{split_name}-p{k}",
                              index_path=out / "index-parts" / split_name / f"part-{k}.json")
                total[split_name] += len(items)
            (out / "index-parts" / "skips").mkdir(parents=True, exist_ok=True)
            (out / "index-parts" / "skips" / f"part-{k}.json").write_text(json.dumps(
                {"part": k, "bins": len(rows), "skips": dict(mine), "host": host, "sha256": _sha256(part),
                 "splits": {s: len(v) for s, v in samples.items()}}))
            skips.update(mine)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("%d manifest parts -> %s shards; bad images %s", len(parts), dict(total), dict(skips))
    return {"parts": len(parts), "bins": dict(total), "skips": dict(skips)}


def _manifest_parts(manifest: Path) -> dict:
    """plan's parts.json (in the manifest folder, or the file itself): {part number: {"bins", "sha256"}}."""
    path = manifest / PARTS_JSON if manifest.is_dir() else manifest
    try:
        return json.loads(path.read_text())["parts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--manifest {manifest}: no {PARTS_JSON} of `process plan` ({type(e).__name__}: {e})") \
            from None


def _read_parts(parts: Path, named: dict) -> tuple[dict, dict, int]:
    """The index parts of the manifest's parts only: (split -> index parts, part -> its record, ignored files).
    Files of other parts (a rerun under the same DataVersion with a changed manifest leaves them) are ignored;
    a manifest part with no record of its own checksum means Shard did not write it: refused."""
    records, ignored = {}, 0
    for p in sorted((parts / "skips").glob("part-*.json")):
        doc = json.loads(p.read_text())
        if doc.get("part") in named and doc.get("sha256") == named[doc["part"]]["sha256"]:
            records[doc["part"]] = doc
        else:
            ignored += 1
    absent = sorted(set(named) - set(records))
    if absent:
        raise DataError(f"{parts}: {len(absent)} of the manifest's {len(named)} parts have no index part written "
                        f"from it (e.g. part-{absent[0]}): did every Shard instance finish?")
    by_split: dict[str, list] = {}
    for k, doc in sorted(records.items()):
        for split_name, n in doc["splits"].items():
            path = parts / split_name / f"part-{k}.json"
            part = json.loads(path.read_text()) if path.is_file() else None
            if part is None or part["samples"] != n:
                raise DataError(f"{path}: missing or not the index part that part {k}'s record names ({n} samples)")
            by_split.setdefault(split_name, []).append(part)
    used = sum(len(v) for v in by_split.values())
    ignored += sum(1 for d in parts.iterdir() if d.is_dir() and d.name != "skips" for _ in d.glob("part-*.json"))
    return by_split, records, ignored - used


def index(parts: str | Path, out: str | Path, manifest: str | Path,
          max_bad_fraction: float = MAX_BAD_FRACTION) -> dict:
    """The index parts of the manifest's parts (`manifest`: plan's manifest folder) -> one index.json per split
    (written where the shards are uploaded) and the pipeline's summary: bins per split, bad images summed over
    every part. Refuses when more than `max_bad_fraction` of the manifest's bins were bad."""
    from ..data.shard_parts import combine_indexes
    from ..data.shards import write_index

    parts, out = Path(parts), Path(out)
    if not (parts / "skips").is_dir():
        raise UserError(f"--parts {parts}: no index parts there (expected skips/ and <split>/part-NNNNN.json from "
                        "`process shard`)")
    named = _manifest_parts(Path(manifest))
    by_split, records, ignored = _read_parts(parts, named)
    skips = Counter()
    for doc in records.values():
        skips.update(doc["skips"])
    bins, bad = sum(d["bins"] for d in records.values()), sum(skips.values())
    if bins and bad / bins > max_bad_fraction:
        why = ", ".join(f"{n} {r}" for r, n in skips.most_common())
        raise DataError(f"{bad} of {bins} bins ({bad / bins:.1%}) are bad ({why}): more than --max-bad-fraction "
                        f"{max_bad_fraction:g}")
    missing = [s for s in ("train", "val", "test") if s not in by_split]
    if missing:
        raise UserError(f"{parts}: no shards of {', '.join(missing)} (every image of that split was bad?)")
    summary = {"splits": {}, "skips": dict(skips), "parts": len(records), "bins": bins,
               "bad_fraction": bad / bins if bins else 0.0, "ignored_index_parts": ignored}
    for split_name, docs in sorted(by_split.items()):
        combined = combine_indexes(docs)
        write_index(combined, out / split_name / "index.json")
        summary["splits"][split_name] = {"samples": combined["samples"], "shards": len(combined["shards"]),
                                         "bytes": combined["bytes"], "counts": combined["counts"]}
    (out / "summary").mkdir(parents=True, exist_ok=True)
    (out / "summary" / "summary.json").write_text(json.dumps(summary, indent=1))
    if ignored:
        log.warning("ignored %d index parts of parts not in the manifest (an earlier run under the same output)",
                    ignored)
    log.info("combined %d index parts: %s; bad images %s", summary["parts"],
             {s: v["samples"] for s, v in summary["splits"].items()}, summary["skips"])
    return summary


def _model_dir(path: Path, scratch: Path) -> Path:
    """A model directory, or the one a model.tar.gz (a training job's artifact) unpacks to."""
    if path.is_dir() and (path / "config.json").is_file():
        return path
    tars = [path] if path.is_file() else sorted(path.glob("*.tar.gz")) if path.is_dir() else []
    if len(tars) != 1:
        raise UserError(f"{path}: expected a model directory (config.json + weights) or one model.tar.gz")
    with tarfile.open(tars[0]) as tar:
        # only plain files and folders inside `scratch` (Debian bookworm's Python 3.11.2 has no extraction filters)
        members = tar.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise UserError(f"{tars[0]}: unexpected member {m.name!r} (not a model.tar.gz from bincounter)")
        tar.extractall(scratch, members=members)
    return scratch


def model_metrics(summary: dict) -> dict:
    """SageMaker's model-quality layout (what the Model Registry shows, and what a pipeline's JsonGet reads:
    multiclass_classification_metrics.accuracy.value), plus bincounter's own report under "bincounter"."""
    def metric(v):
        return {"value": v, "standard_deviation": "NaN"}

    cm = summary["confusion_matrix"]
    counts = [str(c) for c in COUNTS]
    recall = summary["per_class_recall"]
    return {
        "multiclass_classification_metrics": {
            "accuracy": metric(summary["accuracy"]),
            "weighted_recall": metric(summary["accuracy"]),  # recall weighted by support = accuracy
            "confusion_matrix": {t: {p: cm[i][j] for j, p in enumerate(counts)} for i, t in enumerate(counts)},
            # a count with no test images has no recall: left out (NaN is not JSON, and JsonGet parses strictly)
            **{f"recall_count_{c}": metric(recall[c]) for c in counts if recall[c] is not None},
        },
        "regression_metrics": {"rmse": metric(summary["rmse"])},
        "bincounter": summary,
    }


def _finite(x):
    """NaN/inf -> null, everywhere: strict JSON for the pipeline's JsonGet and the Model Registry."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def evaluate(model: str | Path, data: str | Path, out: str | Path, batch_size: int = 32) -> dict:
    """Evaluate a model on a channel (per-image or sharded) -> OUT/evaluation.json (+ eval.json/PNG)."""
    from ..evaluate import evaluate_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = _model_dir(Path(model), Path(scratch))
        summary, paths = evaluate_model(model_dir, data, out, batch_size=batch_size)
    doc = model_metrics(summary)
    (out / EVALUATION).write_text(json.dumps(_finite(doc), indent=2, allow_nan=False))
    log.info("accuracy %.4f, RMSE %.4f on %d images -> %s (%s)", summary["accuracy"], summary["rmse"],
             summary["n"], out / EVALUATION, ", ".join(str(p) for p in paths))
    return doc

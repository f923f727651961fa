"""How each S3 channel of `sm train` / `sm tune` goes into the job (client side): its kind, its size, its input
mode and the volume the job needs.

* Kind: a channel is sharded when `<uri>/index.json` exists (`data.shards`); one GetObject reads it and its
  `bytes` is the data size. Otherwise it is per-image (`<count>/<id>.jpg`) and its size is the sum of
  ListObjectsV2's sizes (listed only when a File-mode volume must be sized).
* Mode: FastFile for a sharded channel (SageMaker mounts the prefix and fetches byte ranges as the trainer
  reads: a few large objects read sequentially, nothing copied before the first step), File for a per-image
  channel (FastFile would pay one GET per image per epoch). `--input-mode` sets every channel. Pipe is refused:
  the trainer needs index.json and random access within shards, and a channel's one FIFO cannot be split
  across ranks and DataLoader workers. Every channel is FullyReplicated: the trainer splits samples per rank.
* Volume: File mode copies the data to the volume before the first step, so it gets
  max(30, ceil(1.2 x data GB) + 10) GB (the data of the File-mode channels); with FastFile only, 30 GB.
  `--volume-size` overrides.

A dry run reads nothing (no network call): a channel's kind and size are unknown there, so without
`--input-mode` the request shows File mode, and without `--volume-size` or `--data-size-gb` a File-mode volume
is a placeholder; both are said on stderr.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from .. import aws
from ..errors import UserError

log = logging.getLogger("bincounter")
MODES = ("File", "FastFile", "Pipe")
MIN_VOLUME_GB = 30
DRY_RUN_VOLUME_GB = 50  # placeholder where the data's size is unknown (a dry run); enough by the rule for 33 GB
PIPE_REFUSED = ("--input-mode Pipe: bincounter's trainer needs index.json and random access within shards, and one "
                "FIFO per channel cannot be split across ranks and DataLoader workers; use FastFile (streams from "
                "S3) or File (copies to the volume)")


@dataclass
class Channel:
    name: str
    uri: str
    mode: str
    sharded: bool | None = None  # None: not read (a dry run, or not needed)
    size: int | None = None  # bytes; None: not read

    def describe(self) -> str:
        kind = {True: "sharded", False: "per-image", None: None}[self.sharded]
        facts = [x for x in (kind, None if self.size is None else f"{self.size / 1e9:.3g} GB") if x]
        return f"{self.name} {self.mode}" + (f" ({', '.join(facts)})" if facts else "")


def file_volume_gb(size_bytes: int | float) -> int:
    """What a File-mode job's volume must hold: the data plus 20%, plus 10 GB, at least 30 GB."""
    return max(MIN_VOLUME_GB, math.ceil(1.2 * size_bytes / 1e9) + 10)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def read_index(s3, uri: str) -> dict | None:
    """The channel's index.json (a sharded channel), or None where there is none (per-image)."""
    from botocore.exceptions import ClientError

    from ..data.shards import INDEX  # that module imports torch

    bucket, prefix = _split(uri)
    key = f"{prefix.rstrip('/')}/{INDEX}" if prefix.strip("/") else INDEX
    with aws.user_errors(f"GetObject s3://{bucket}/{key}"):
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
    try:
        return json.loads(body)
    except ValueError:
        raise UserError(f"s3://{bucket}/{key} is not JSON; upload the shard directory again") from None


def listed_size(s3, uri: str) -> int:
    """Bytes under the channel's prefix (ListObjectsV2, as SageMaker's S3Prefix reads it)."""
    bucket, prefix = _split(uri)
    total = objects = 0
    with aws.user_errors(f"ListObjectsV2 {uri}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                total += o["Size"]
                objects += 1
    if not objects:
        raise UserError(f"channel {uri}: no objects under it (upload with `bincounter data upload`)")
    return total


def check(channels: dict[str, str], *, input_mode: str | None, volume_gb: int | None,
          data_size_gb: float | None) -> None:
    """The mistakes refused before any request, each one line."""
    if input_mode == "Pipe":
        raise UserError(PIPE_REFUSED)
    if input_mode is not None and input_mode not in MODES:
        raise UserError(f"--input-mode {input_mode}: one of File, FastFile")
    if volume_gb is not None and volume_gb < 1:
        raise UserError(f"--volume-size {volume_gb}: GB, at least 1")
    if data_size_gb is not None and data_size_gb < 0:
        raise UserError(f"--data-size-gb {data_size_gb}: must be >= 0")
    for name, uri in channels.items():
        if not uri.startswith("s3://"):
            raise UserError(f"channel {name}: {uri!r} is not an S3 URI (upload with `bincounter data upload`)")


def plan(channels: dict[str, str], *, input_mode: str | None, volume_gb: int | None, data_size_gb: float | None,
         s3=None) -> tuple[list[Channel], int, str, list[str]]:
    """(channels with their modes, volume GB, the `input:` line printed next to the cost line, warnings).
    `s3`: a boto3 S3 client; None in a dry run (nothing is read). Only what the answer needs is read: index.json
    per channel for the default mode, a listing only to size a File-mode volume; nothing when --input-mode is
    given and FastFile, --volume-size or --data-size-gb settles the volume."""
    check(channels, input_mode=input_mode, volume_gb=volume_gb, data_size_gb=data_size_gb)
    notes: list[str] = []
    out: list[Channel] = []
    for name, uri in channels.items():
        c = Channel(name, uri, input_mode or "File")
        if s3 is not None and (input_mode is None or (input_mode == "File" and volume_gb is None
                                                      and data_size_gb is None)):
            index = read_index(s3, uri)
            c.sharded = index is not None
            if index is not None:
                c.size = int(index.get("bytes") or sum(s.get("bytes", 0) for s in index.get("shards", [])))
            if input_mode is None:
                c.mode = "FastFile" if c.sharded else "File"
        out.append(c)
    if s3 is None and input_mode is None:
        notes.append("dry run: the channels are not read (no network call), so whether each is sharded is unknown; "
                     "the request shows File mode (a real run picks FastFile for a channel holding index.json; "
                     "--input-mode sets it)")
    file_channels = [c for c in out if c.mode == "File"]
    if volume_gb is not None:
        volume, why = volume_gb, "from --volume-size"
    elif not file_channels:
        volume, why = MIN_VOLUME_GB, "FastFile streams from S3: nothing copied to the volume"
    elif data_size_gb is not None:
        volume, why = file_volume_gb(data_size_gb * 1e9), f"File mode, {data_size_gb:g} GB from --data-size-gb"
    elif s3 is None:
        volume, why = DRY_RUN_VOLUME_GB, "placeholder: the data's size is unknown in a dry run"
        notes.append(f"dry run: the data's size is unknown (no network call); the request shows a "
                     f"{DRY_RUN_VOLUME_GB} GB placeholder volume (a real run gives File mode max(30, ceil(1.2 x data "
                     f"GB) + 10) GB; --data-size-gb or --volume-size sets it)")
    else:
        for c in file_channels:
            if c.size is None:
                log.info("listing %s to size the File-mode volume (--volume-size or --data-size-gb skips this)", c.uri)
                c.size = listed_size(s3, c.uri)
        total = sum(c.size for c in file_channels)
        volume, why = file_volume_gb(total), f"File mode, {total / 1e9:.3g} GB of data"
    if volume_gb is not None and file_channels and data_size_gb is not None \
            and volume_gb < file_volume_gb(data_size_gb * 1e9):
        notes.append(f"--volume-size {volume_gb} is below what File mode needs for {data_size_gb:g} GB "
                     f"({file_volume_gb(data_size_gb * 1e9)} GB): the copy may fill the volume")
    return out, volume, f"input: {', '.join(c.describe() for c in out)}; volume {volume} GB ({why})", notes


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # what model.resolve_weights_file picks in the container
PROVENANCE_SUFFIX = ".provenance.json"  # weights.PROVENANCE_SUFFIX (not imported: weights imports torch)


def pretrained_provenance(s3, uri: str, archs: list[str], flag: str = "--pretrained") \
        -> list[tuple[str, str, bytes | None]]:
    """For each arch, the `pretrained` channel's weights object picked as the container will pick it for that arch
    (a weights file, or the one weights file under the prefix, or the one named <arch>.<suffix>) and the bytes of
    the provenance JSON beside it (None when there is none) -> [(arch, weights URI, bytes)]. One ListObjectsV2,
    one GetObject per weights object picked. A prefix holding no weights for an arch is a one-line UserError."""
    from botocore.exceptions import ClientError

    bucket, prefix = _split(uri)
    if prefix.endswith(WEIGHT_SUFFIXES):
        picked = {a: prefix for a in archs}
    else:
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        with aws.user_errors(f"ListObjectsV2 {uri}"):
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                    for o in page.get("Contents", [])]
        files = sorted(k for k in keys if k.endswith(WEIGHT_SUFFIXES) and not k.rsplit("/", 1)[-1].startswith("."))
        picked = {}
        for arch in archs:
            named = [k for k in files if k.rsplit("/", 1)[-1].rsplit(".", 1)[0] == arch]
            if len(files) != 1 and len(named) != 1:
                held = f" ({', '.join(k.rsplit('/', 1)[-1] for k in files)})" if 1 < len(files) <= 5 else ""
                raise UserError(f"{flag} {uri}: holds {len(files)} weight files{held}, none named {arch}.safetensors; "
                                f"the job needs exactly one, or one named <arch>.safetensors for each arch it trains "
                                f"(bincounter weights fetch --arch {arch}, then upload its folder)")
            picked[arch] = (named or files)[0]
    data: dict[str, bytes | None] = {}
    for key in dict.fromkeys(picked.values()):
        pkey = key.rsplit(".", 1)[0] + PROVENANCE_SUFFIX
        with aws.user_errors(f"GetObject s3://{bucket}/{pkey}"):
            try:
                data[key] = s3.get_object(Bucket=bucket, Key=pkey)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                    raise
                data[key] = None
    return [(a, f"s3://{bucket}/{k}", data[k]) for a, k in picked.items()]

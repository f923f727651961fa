"""torch.distributed set-up, torchrun-style: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.

NCCL on GPU, gloo on CPU. Rank 0 alone logs, saves and writes checkpoints (`is_main`).
The network interface for gloo/NCCL is chosen here (`choose_ifname`), not trusted from the platform:
SageMaker local mode, for one, names an interface (`ethwe`) that does not exist in the container.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """"cpu", "auto" (GPU `local_rank` when CUDA is there), "cuda" (GPU `local_rank`) or "cuda:N" (GPU N,
    e.g. a serving worker's own GPU: the explicit index wins over local_rank)."""
    from .errors import UserError

    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    try:
        wanted = torch.device("cuda" if pref == "auto" else pref)
    except RuntimeError:
        raise UserError(f"--device {pref!r}: expected auto, cpu, cuda or cuda:N") from None
    if wanted.type != "cuda":
        raise UserError(f"--device {pref!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {pref} asked for CUDA but no GPU is visible")
    index = local_rank if wanted.index is None else wanted.index
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {pref}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def list_interfaces() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return [name for _, name in socket.if_nameindex()]


def choose_ifname(preferred: str | None = None) -> str | None:
    """The interface gloo/NCCL should bind: `preferred` when it exists, else the first non-loopback one."""
    names = list_interfaces()
    if preferred and preferred in names:
        return preferred
    for n in names:
        if n != "lo" and not n.startswith(("docker", "veth", "br-")):
            return n
    return None


def init_distributed(device_pref: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        wanted = os.environ.get(var)
        chosen = choose_ifname(wanted)
        if chosen and chosen != wanted:
            if wanted:
                log.warning("%s=%s does not exist here (interfaces: %s); using %s",
                            var, wanted, ", ".join(list_interfaces()), chosen)
            os.environ[var] = chosen
    # a frozen peer (dead host, network split) must not hold the others for gloo's default 30 min
    timeout_s = dist_timeout_s()
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    info = DistInfo(rank, world, local_rank, device)
    log.info("process group up: rank %d/%d (local %d) backend=%s interface=%s master=%s:%s timeout=%.0fs",
             rank, world, local_rank, backend, os.environ.get("GLOO_SOCKET_IFNAME"),
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), timeout_s)
    return info


DEFAULT_DIST_TIMEOUT_S = 300


def dist_timeout_s() -> float:
    """BINCOUNTER_DIST_TIMEOUT_S (default 300): how long a collective waits for a silent peer before the run
    fails. Every rank meets the others at least once per training step, so minutes are plenty; raise it only
    when one rank does long work alone (it never does in this trainer: rank 0's saves take seconds)."""
    from .errors import UserError

    raw = os.environ.get("BINCOUNTER_DIST_TIMEOUT_S", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_DIST_TIMEOUT_S
    except ValueError:
        raise UserError(f"BINCOUNTER_DIST_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"BINCOUNTER_DIST_TIMEOUT_S={raw!r} must be positive")
    return value


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at the start of
    each training forward, so after an epoch each rank holds the statistics of its own last batch: without
    this, ranks would validate different models and the reported val_acc would not be the saved model's."""
    if info.enabled:
        for b in model.buffers():
            dist.broadcast(b.data, src=0)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

"""What `docker run IMAGE train` runs, via sagemaker-training's `train` command
(`SAGEMAKER_TRAINING_MODULE=bincounter.sagemaker.train_entry:main`).

The toolkit's plain `train` only chooses between MPI and a single process, and its torchrun runner wants a
user script in /opt/ml/code. A BYOC image has neither, so this module launches the processes itself:

* one host, at most one GPU  -> the trainer runs in this process;
* otherwise                  -> `torchrun --nnodes=<hosts> --nproc_per_node=<GPUs or 1> --node_rank=<i>
                                 --master_addr=<first host>` running `bincounter train`, gloo on CPU,
                                 NCCL on GPU; every host waits (bounded, `BINCOUNTER_HOST_WAIT_S`, default
                                 300 s) for the others' names to resolve instead of the toolkit's silent 15 min.

A user mistake (bad channel, unknown hyperparameter) ends as one line in /opt/ml/output/failure (the
toolkit writes it from `ClientError`; child processes write it themselves via BINCOUNTER_FAILURE_FILE).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

from ..errors import UserError
from .contract import TrainingContract, train_argv

log = logging.getLogger("bincounter")
MASTER_PORT = "29500"
#: the network interface SageMaker local mode names in resourceconfig.json; its containers have no such NIC
LOCAL_MODE_NIC = "ethwe"


def _parser():
    import argparse

    from ..train_config import add_train_arguments

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, no usage dump, no sys.exit
            raise UserError(f"bad hyperparameter: {message}")

    p = Parser(prog="bincounter train (container)", add_help=False)
    add_train_arguments(p)
    return p


def wait_for_hosts(hosts: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for host in hosts:
        delay, last_log = 0.2, 0.0
        while True:
            try:
                socket.gethostbyname(host)
                break
            except OSError:
                now = time.monotonic()
                if now > deadline:
                    raise UserError(f"host {host!r} did not resolve within {timeout_s:.0f} s "
                                    "(BINCOUNTER_HOST_WAIT_S); the cluster's network is not up") from None
                if now - last_log > 10:
                    log.info("waiting for host %s to resolve ...", host)
                    last_log = now
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def plan(contract: TrainingContract, gpus: int) -> dict:
    nproc = max(1, gpus)
    return {"nnodes": len(contract.hosts), "nproc_per_node": nproc, "world_size": nproc * len(contract.hosts),
            "node_rank": contract.node_rank, "master_addr": contract.hosts[0]}


def torchrun_command(p: dict, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(p["nnodes"]),
            "--nproc_per_node", str(p["nproc_per_node"]), "--node_rank", str(p["node_rank"]),
            "--master_addr", p["master_addr"], "--master_port", MASTER_PORT,
            "-m", "bincounter", "train", *argv]


def run(contract: TrainingContract) -> None:
    import torch

    from ..distributed import choose_ifname, list_interfaces

    parser = _parser()
    argv, ignored = train_argv(contract, parser)
    if ignored:
        log.info("ignoring SageMaker-internal hyperparameters: %s", ", ".join(ignored))
    args = parser.parse_args(argv)  # validates every value before any process starts
    gpus = torch.cuda.device_count()
    p = plan(contract, gpus)
    log.info("host %s (%d of %d), %d GPU(s): world size %d; trainer args: %s", contract.current_host,
             p["node_rank"] + 1, p["nnodes"], gpus, p["world_size"], " ".join(argv))
    if p["world_size"] == 1:
        from ..train import train
        from ..train_config import config_from_args

        train(config_from_args(args))
        return

    nic = choose_ifname(contract.network_interface)
    if contract.network_interface and nic != contract.network_interface:
        # SageMaker local mode always names `ethwe` (no such NIC in its containers): expected there, INFO
        level = logging.INFO if contract.network_interface == LOCAL_MODE_NIC else logging.WARNING
        log.log(level, "platform names network interface %r, which does not exist here (have: %s); using %r",
                contract.network_interface, ", ".join(list_interfaces()), nic)
    env = {**os.environ, "BINCOUNTER_FAILURE_FILE": str(contract.failure_file)}
    if nic:
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = nic
    env.pop("NCCL_PROTO", None)  # the toolkit forces "simple" everywhere; NCCL picks better on its own
    cpus = len(os.sched_getaffinity(0))
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // p["nproc_per_node"])))
    if p["nnodes"] > 1:
        wait_for_hosts(contract.hosts, float(os.environ.get("BINCOUNTER_HOST_WAIT_S", "300")))
    cmd = torchrun_command(p, argv)
    log.info("launching: %s", " ".join(cmd))
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        reason = None
        if contract.failure_file.is_file():
            reason = contract.failure_file.read_text().strip().splitlines()[0:1]
        raise UserError(reason[0] if reason else f"training processes exited with code {rc}; see the log")


def main() -> None:
    """Called by sagemaker-training's trainer; raising ClientError makes it write a one-line failure file."""
    from sagemaker_training import errors as sm_errors

    from ..train import setup_logging

    setup_logging()
    try:
        run(TrainingContract.from_env())
    except UserError as e:
        raise sm_errors.ClientError(str(e)) from None

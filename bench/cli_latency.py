"""CLI latency: how long `bincounter` takes to answer what a user types most, from process start to exit.

Commands: --version, --help, `train --help`, `sm train --help`, two argument errors (a bad --epochs, a misspelt
--arch), and the offline dry runs of `sm train`, `sm tune`, `sm deploy` (instances, autoscaling) and the README's
serverless `sm deploy` with the CPU image (no AWS credentials, region or network needed). Each is run --runs times
in interleaved rounds (every command once per round, so a shared machine's load drifts over all of them alike) after
one unmeasured warm-up round (the OS file cache; the cache of timm's model list that the arch checks read).
Reported per command: the median wall time, min and max, and the median CPU time of the process (user + sys: what
the command itself costs, much less sensitive to other load on the machine than wall time), against the issue's
targets (1 s for help, version and argument errors, 5 s for a dry run).

With --baseline SRC (another checkout's src/, e.g. before a change) every command also runs with
PYTHONPATH=SRC in the same rounds, so both trees see the same load; the table then shows both.

Prints a table and writes JSON (bench/results/cli_latency.json).

    python bench/cli_latency.py [--runs 5] [--only version,help,sm-train-dry-run] [--baseline ../main/src]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROLE = "arn:aws:iam::123456789012:role/bincounter-sm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bincounter:abc123"
CH = "s3://my-bucket/bincounter/v1"
JOB = ["--role", ROLE, "--image", IMAGE, "--train", f"{CH}/train/", "--val", f"{CH}/val/", "--output",
       "s3://my-bucket/out", "--region", "us-east-1"]
TRAIN_STUB = ["train", "--train", "data/channels/train", "--val", "data/channels/val", "--model-dir", "model"]

#: name -> (argv, expected exit code, target seconds)
COMMANDS = {
    "version": (["--version"], 0, 1.0),
    "help": (["--help"], 0, 1.0),
    "train-help": (["train", "--help"], 0, 1.0),
    "sm-train-help": (["sm", "train", "--help"], 0, 1.0),
    "error-epochs": ([*TRAIN_STUB, "--epochs", "x"], 2, 1.0),
    "error-arch": ([*TRAIN_STUB, "--arch", "resnet5O"], 2, 1.0),
    "sm-train-dry-run": (["sm", "train", *JOB, "--test", f"{CH}/test/", "--hp", "profile_steps=50", "--dry-run"],
                         0, 5.0),
    "sm-tune-dry-run": (["sm", "tune", *JOB, "--max-jobs", "12", "--max-parallel", "3", "--spot", "--dry-run"],
                        0, 5.0),
    "sm-deploy-dry-run": (["sm", "deploy", "--role", ROLE, "--model-data", "s3://my-bucket/out/job/output/model.tar.gz",
                           "--image", IMAGE, "--name", "bincounter", "--autoscale", "1,4", "--region", "us-east-1",
                           "--dry-run"], 0, 5.0),
    "sm-deploy-sl-dry-run": (["sm", "deploy", "--role", ROLE, "--training-job", "bc-train-1", "--name", "bincounter-sl",
                              "--cpu-image", IMAGE.replace("bincounter:", "bincounter-cpu:"), "--serverless", "3072,10",
                              "--region", "us-east-1", "--dry-run"], 0, 5.0),
}


def command_line() -> list[str]:
    """The console script a user runs (next to this Python), else `python -m bincounter`."""
    script = Path(sys.executable).parent / "bincounter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bincounter"]


def offline_env(tmp: Path, src: str | None = None) -> dict:
    """No AWS credentials, config or region from the environment (the dry runs need none); the user's HOME stays
    (the cache of timm's model list lives there). `src`: the bincounter sources to run (PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(AWS_CONFIG_FILE=str(tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    if src:
        env["PYTHONPATH"] = src
    return env


def run_once(cmd: list[str], expect: int, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; a run with another exit code stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd[-6:])}: exit {proc.returncode}, expected {expect}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _summary(argv: list[str], target: float, samples: list[tuple[float, float]]) -> dict:
    walls = [w for w, _ in samples]
    cpus = [c for _, c in samples]
    return {"argv": argv, "runs": len(samples), "wall_median_s": round(statistics.median(walls), 3),
            "wall_min_s": round(min(walls), 3), "wall_max_s": round(max(walls), 3),
            "cpu_median_s": round(statistics.median(cpus), 3), "target_s": target,
            "within_target": statistics.median(walls) < target}


def bench(names: list[str], runs: int, baseline: str | None = None) -> dict:
    base = command_line()
    trees = {"": None, **({"baseline": baseline} if baseline else {})}
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        envs = {tree: offline_env(Path(tmp), src) for tree, src in trees.items()}
        for name in names:  # warm-up round, not measured
            argv, expect, _ = COMMANDS[name]
            for env in envs.values():
                run_once(base + argv, expect, env)
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {(t, n): [] for t in envs for n in names}
        load = [os.getloadavg()[0]]
        for _ in range(runs):
            for name in names:
                argv, expect, _ = COMMANDS[name]
                for tree, env in envs.items():
                    samples[tree, name].append(run_once(base + argv, expect, env))
            load.append(os.getloadavg()[0])
    doc = {"command": base, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                        "platform": platform.platform(), "load_1min_during": load},
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "results": {n: _summary(COMMANDS[n][0], COMMANDS[n][2], samples["", n]) for n in names}}
    if baseline:
        doc["baseline"] = {"src": baseline, "results": {n: _summary(COMMANDS[n][0], COMMANDS[n][2],
                                                                   samples["baseline", n]) for n in names}}
    return doc


def table(doc: dict) -> str:
    old = doc.get("baseline", {}).get("results", {})
    rows = [f"{'command':<22}{'median s':>10}{'min s':>8}{'max s':>8}{'cpu s':>8}{'target':>8}  ok"
            + (f"{'baseline s':>12}{'cpu s':>8}" if old else "")]
    for name, r in doc["results"].items():
        rows.append(f"{name:<22}{r['wall_median_s']:>10.2f}{r['wall_min_s']:>8.2f}{r['wall_max_s']:>8.2f}"
                    f"{r['cpu_median_s']:>8.2f}{r['target_s']:>7.0f}s  {'yes' if r['within_target'] else 'NO ':<3}"
                    + (f"{old[name]['wall_median_s']:>11.2f}{old[name]['cpu_median_s']:>8.2f}" if old else ""))
    load = doc["machine"]["load_1min_during"]
    rows.append(f"({doc['machine']['cpus']} CPUs, 1-min load {min(load):.1f}-{max(load):.1f} during the runs)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="measured runs per command (the median is reported)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(COMMANDS)}")
    p.add_argument("--baseline", metavar="SRC", help="another checkout's src/ to run in the same rounds")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_latency.json"))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(COMMANDS)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        p.error(f"unknown command name(s) {', '.join(unknown)}; choose from {', '.join(COMMANDS)}")
    if not shutil.which(command_line()[0]):
        p.error(f"{command_line()[0]} not found")
    doc = bench(names, args.runs, args.baseline)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(table(doc))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

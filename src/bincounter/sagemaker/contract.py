"""The SageMaker training contract, parsed once at the edge.

Reads /opt/ml (or $SAGEMAKER_BASE_DIR): input/config/hyperparameters.json, resourceconfig.json and the
channel folders input/data/<name>. Produces plain `bincounter train` arguments, so the trainer itself
never sees SageMaker's strings.

Hyperparameters arrive as strings (`"epochs": "3"`, `"pretrained": "false"`, SDK v2 even JSON-quotes
strings: `"\\"efficientnet_b0\\""`). Keys map onto the trainer's flags (`batch_size` -> `--batch-size`);
booleans become `--flag` / `--no-flag`; keys starting with `sagemaker_` or `_` (SageMaker's own, e.g.
`_tuning_objective_metric`) are ignored; an unknown key is an error naming the known ones.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

#: channel name -> trainer flag
CHANNELS = {"train": "--train", "val": "--val", "validation": "--val", "test": "--test",
            "pretrained": "--pretrained-path"}
#: flags the container sets from the contract; a hyperparameter may not override them
RESERVED = {"--train", "--val", "--test", "--model-dir", "--output-dir", "--checkpoint-dir", "--pretrained-path"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass
class TrainingContract:
    base: Path
    hyperparameters: dict
    channels: dict[str, Path]
    hosts: list[str]
    current_host: str
    network_interface: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return Path(os.environ.get("SM_MODEL_DIR", self.base / "model"))

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return Path(os.environ.get("SM_OUTPUT_DATA_DIR", self.base / "output" / "data"))

    @property
    def checkpoint_dir(self) -> Path:
        # SageMaker syncs this folder with CheckpointConfig's S3 URI (and restores it on a spot restart)
        return Path(os.environ.get("BINCOUNTER_CHECKPOINT_DIR", self.base / "checkpoints"))

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @classmethod
    def from_env(cls, base: str | Path | None = None) -> TrainingContract:
        base = Path(base or os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
        config = base / "input" / "config"
        hps = _read_json(config / "hyperparameters.json", default={})
        if not isinstance(hps, dict):
            raise UserError(f"{config}/hyperparameters.json must hold a JSON object")
        rc = _read_json(config / "resourceconfig.json", default=None)
        if rc is not None:
            hosts, current, nic = list(rc.get("hosts") or []), rc.get("current_host"), rc.get(
                "network_interface_name")
        else:  # outside SageMaker or a partial contract: SM_HOSTS / SM_CURRENT_HOST, else one local host
            hosts = json.loads(os.environ.get("SM_HOSTS", "[]")) or [os.environ.get("SM_CURRENT_HOST", "algo-1")]
            current, nic = os.environ.get("SM_CURRENT_HOST", hosts[0]), os.environ.get("SM_NETWORK_INTERFACE_NAME")
        hosts = sorted(hosts)  # SageMaker's own order: algo-1, algo-2, ...; master = first
        if not hosts or current not in hosts:
            raise UserError(f"resourceconfig: current_host {current!r} is not among hosts {hosts}")
        data = base / "input" / "data"
        channels = {p.name: p for p in sorted(data.iterdir())} if data.is_dir() else {}
        return cls(base, hps, channels, hosts, current, nic)


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def is_false(value) -> bool:
    """A hyperparameter string (or value) that turns a boolean flag off: false, 0, no, off (any case)."""
    return value is False or str(decode_value(value)).strip().lower() in _FALSE


def decode_value(v):
    """SageMaker sends strings; undo one level of JSON ("3" -> 3, "false" -> False, '"x"' -> "x")."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def hyperparameters_to_argv(hps: dict, parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Map hyperparameters onto `parser`'s flags. Returns (argv, ignored keys)."""
    flags = {opt: a for a in parser._actions for opt in a.option_strings if opt.startswith("--")}
    argv, ignored = [], []
    for key in sorted(hps):
        if key.startswith(("sagemaker_", "_")):
            ignored.append(key)
            continue
        flag = "--" + key.replace("_", "-")
        if flag in RESERVED:
            raise UserError(f"hyperparameter {key!r} is set by the container from its channels/paths; "
                            "remove it")
        action = flags.get(flag)
        if action is None:
            known = sorted(o[2:].replace("-", "_") for o in flags if o not in RESERVED and not o.startswith("--no-")
                           and o != "--help")
            raise UserError(f"unknown hyperparameter {key!r} (known: {', '.join(known)})")
        value = decode_value(hps[key])
        if isinstance(action, argparse.BooleanOptionalAction):
            s = str(value).strip().lower()
            if value is True or s in _TRUE:
                argv.append(flag)
            elif value is False or s in _FALSE:
                argv.append("--no-" + flag[2:])
            else:
                raise UserError(f"hyperparameter {key!r} must be true or false (got {hps[key]!r})")
        else:
            argv += [flag, str(value)]
    return argv, ignored


def train_argv(contract: TrainingContract, parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """The complete `bincounter train` argv for this container (channels, paths, hyperparameters)."""
    argv: list[str] = []
    for name, path in contract.channels.items():
        flag = CHANNELS.get(name)
        if flag is None:
            continue
        if flag in argv:
            raise UserError("channels 'val' and 'validation' are both given; keep one")
        argv += [flag, str(path)]
    for needed in ("--train", "--val"):
        if needed not in argv:
            have = ", ".join(contract.channels) or "none"
            raise UserError(f"missing the {needed[2:]!r} channel (have: {have}); a training job needs "
                            "'train' and 'val' (optional: 'test', 'pretrained')")
    argv += ["--model-dir", str(contract.model_dir), "--output-dir", str(contract.output_data_dir),
             "--checkpoint-dir", str(contract.checkpoint_dir)]
    hp_argv, ignored = hyperparameters_to_argv(contract.hyperparameters, parser)
    if "--pretrained-path" in argv and "--no-pretrained" not in hp_argv:
        hp_argv.append("--pretrained")
    return argv + hp_argv, ignored

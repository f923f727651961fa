"""`--hp NAME=VALUE` and `sm tune`'s ranges, checked on the user's machine with the container's own rules,
before any request: a job that would fail on its first line in the container is refused here instead.

Nothing is listed twice. The names are the trainer's flags (`train_config.add_train_arguments`) whose destination is a
`train_config.TrainConfig` field, read at run time; hyperparameter strings are mapped onto those flags by
`contract.hyperparameters_to_argv` (what the container runs), parsed by the same argparse types, and the
resulting `TrainConfig` is checked by its own `validate()`. Only the model name is checked beyond that
(`timm.is_model`), because the container finds an unknown one only after the instances have started.

The one client-side module that imports argparse, and why: it parses hyperparameter strings with the trainer's
own flag definitions (the single place they are written); no CLI Namespace comes in, a `TrainConfig` goes on.
"""

from __future__ import annotations

import argparse
import logging

from ..archs import check_arch, close_matches
from ..errors import UserError

#: what `sm tune` searches; `sm train --from-tuning-job` takes the best values of these
TUNED = ("lr", "batch_size", "epochs", "arch", "image_size")
log = logging.getLogger("bincounter")
_PLACEHOLDER_CHANNELS = ["--train", "-", "--val", "-", "--model-dir", "-"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, no exit
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    from ..train_config import add_train_arguments

    p = _Parser(prog="--hp", add_help=False)
    add_train_arguments(p)
    return p


def flag_names(parser: argparse.ArgumentParser | None = None, fields=None) -> list[str]:
    """Hyperparameter names: the trainer's --flags (as snake_case) the container does not set itself; with
    `fields` (TrainConfig's), only flags whose destination is one of them."""
    from ..sagemaker.contract import RESERVED

    parser = parser or _parser()
    out = []
    for a in parser._actions:
        if fields is not None and a.dest not in fields:
            continue
        for opt in a.option_strings:
            if opt.startswith("--") and not opt.startswith("--no-") and opt not in RESERVED and opt != "--help":
                out.append(opt[2:].replace("-", "_"))
    return sorted(out)


def names() -> list[str]:
    """The valid `--hp` names, derived now from TrainConfig's fields and the trainer's flags."""
    import dataclasses

    from ..train_config import TrainConfig

    return flag_names(fields={f.name for f in dataclasses.fields(TrainConfig)})


def default(name: str):
    """The trainer's default for a hyperparameter (TrainConfig's field), e.g. default("arch")."""
    import dataclasses

    from ..train_config import TrainConfig  # torch-free: a dry run must not import torch

    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _label(key: str, value, origin: dict[str, str] | None) -> str:
    return f"{origin[key]} {value}" if origin and key in origin else f"--hp {key}={value}"


def _check_one(parser, key: str, value: str, known: list[str], origin: dict[str, str] | None = None) -> None:
    from ..sagemaker.contract import hyperparameters_to_argv

    if key.startswith(("sagemaker_", "_")):
        raise UserError(f"--hp {key}: names starting with 'sagemaker_' or '_' are SageMaker's own")
    if key not in known and key.replace("-", "_") in known:
        raise UserError(f"--hp {key}={value}: hyperparameter names are spelled with '_', not '-' (did you mean "
                        f"--hp {key.replace('-', '_')}={value}?)")
    if key not in known:
        close = close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"--hp {key}={value}: unknown hyperparameter ({hint}valid: {', '.join(known)})")
    try:
        argv, _ = hyperparameters_to_argv({key: value}, parser)
        parser.parse_args(_PLACEHOLDER_CHANNELS + argv)
    except UserError as e:
        raise UserError(f"{_label(key, value, origin)}: {e}") from None


def validate(hps: dict[str, str], origin: dict[str, str] | None = None) -> None:
    """Refuse what the container would refuse: unknown names, values of the wrong type, and values
    `TrainConfig.validate()` rejects (epochs < 1, image_size < 32, ...), an MLflow URI the job cannot reach (a
    folder, file:, sqlite:, localhost) or a malformed ARN; then the model name. `origin` names the option a value
    came from, for the message (default `--hp`)."""
    from ..sagemaker.contract import hyperparameters_to_argv
    from ..train_config import config_from_args

    parser = _parser()
    known = names()
    for k, v in hps.items():
        _check_one(parser, k, v, known, origin)
    if hps.get("mlflow"):
        from ..tracking import check_uri, resolve_uri

        if resolve_uri(hps["mlflow"]):
            check_uri(hps["mlflow"], _label("mlflow", hps["mlflow"], origin), remote=True)
    argv, _ = hyperparameters_to_argv(hps, parser)
    cfg = config_from_args(parser.parse_args(_PLACEHOLDER_CHANNELS + argv))
    try:
        cfg.validate()
    except UserError as e:
        where = ", ".join(_label(k, v, origin) for k, v in hps.items() if k in str(e))
        raise UserError(f"{where or '--hp'}: {e}") from None
    check_arch(cfg.arch, cfg.backend, _label("arch", cfg.arch, origin))


# ------------------------------------------------------------------------------- MLflow through to the job
#: the names `with_tracking` fills in; they mean nothing without `mlflow` (the tracking URI) and are dropped then
TRACKING_NAMES = ("mlflow_experiment", "mlflow_from_trial")


def from_trial(desc: dict) -> dict[str, str]:
    """What a job started from a tuning job (DescribeHyperParameterTuningJob `desc`) passes on about it: the best
    trial's name, tagged on the job's MLflow run (kept only with tracking: `with_tracking`)."""
    best = (desc.get("BestTrainingJob") or {}).get("TrainingJobName")
    return {"mlflow_from_trial": best} if best else {}


def with_tracking(hps: dict, *, experiment: str | None = None, env: dict | None = None) -> dict:
    """`hps` with what the container needs to name its MLflow run, when `mlflow` (the tracking URI, `--hp
    mlflow=URI`) is among them: `experiment` (a tuning job's name: its trials become runs of one experiment)
    unless the user named one. Without tracking the MLflow names are dropped, so the request is what it was.
    The client's own MLFLOW_TRACKING_URI is not passed on by itself (it often points at a laptop's server); a
    line says how to pass it."""
    import os

    from ..tracking import resolve_uri

    env = os.environ if env is None else env
    if "mlflow" not in hps or not resolve_uri(str(hps["mlflow"])):
        if env.get("MLFLOW_TRACKING_URI") and "mlflow" not in hps:
            log.info("MLFLOW_TRACKING_URI is set here, but a SageMaker job tracks only with --hp mlflow=URI (a "
                     "tracking server the job can reach, or a SageMaker MLflow tracking server ARN)")
        return {k: v for k, v in hps.items() if k not in TRACKING_NAMES}
    out = dict(hps)
    if experiment:
        out.setdefault("mlflow_experiment", experiment)
    return out


def _items(option: str, text: str) -> list[str]:
    """A comma-separated list's items; an empty one (a stray comma) is refused, not dropped."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise UserError(f"{option} {text!r}: an empty item (a stray comma?)")
    return items


def _numbers(option: str, text: str, cast) -> tuple:
    items = _items(option, text)
    try:
        return tuple(cast(v) for v in items)
    except ValueError:
        kind = "integers" if cast is int else "numbers"
        raise UserError(f"{option} {text!r}: expected comma-separated {kind}") from None


def _range(option: str, text: str, cast, name: str) -> tuple:
    vals = _numbers(option, text, cast)
    if len(vals) != 2:
        raise UserError(f"{option} {text!r}: expected MIN,MAX (two values); to fix {name} instead of tuning it, "
                        f"leave out {option} and pass --hp {name}=VALUE" if len(vals) == 1 else
                        f"{option} {text!r}: expected MIN,MAX (two values)")
    lo, hi = vals
    if lo > hi:
        raise UserError(f"{option} {text!r}: MIN {lo} is greater than MAX {hi}; write {hi},{lo}")
    if lo == hi:
        raise UserError(f"{option} {text!r}: MIN equals MAX; to fix {name}, leave out {option} and pass "
                        f"--hp {name}={lo}")
    return vals


#: `sm tune`'s ranges when none is given; a name fixed with --hp is then not tuned.
DEFAULT_RANGES = {"lr": "1e-4,3e-3", "batch_size": "32,64,128", "epochs": "5,20"}


def lr_range(text: str | None) -> tuple[float, float]:
    """--lr-range MIN,MAX (default DEFAULT_RANGES["lr"]), checked like `sm tune`'s."""
    return _range("--lr-range", text or DEFAULT_RANGES["lr"], float, "lr")


def tuning_ranges(*, lr: str | None, batch_sizes: str | None, epochs: str | None, archs: str, image_sizes: str,
                  static: dict[str, str]) -> dict:
    """Parse and check `sm tune`'s ranges: MIN < MAX, every end a valid hyperparameter with the trainer's own
    rules, known model names, no --hp fixing a name whose range was given. A range left out takes its default
    (DEFAULT_RANGES) unless --hp fixes that name. -> {name: tuple of values}."""
    given = {"lr": lr, "batch_size": batch_sizes, "epochs": epochs}
    text = {k: (v if v is not None else None if k in static else DEFAULT_RANGES[k]) for k, v in given.items()}
    out = {}
    if text["lr"] is not None:
        out["lr"] = _range("--lr-range", text["lr"], float, "lr")
    if text["epochs"] is not None:
        out["epochs"] = _range("--epochs-range", text["epochs"], int, "epochs")
    if text["batch_size"] is not None:
        out["batch_size"] = _numbers("--batch-sizes", text["batch_size"], int)  # "" is one empty item
    if archs.strip():
        out["arch"] = tuple(_items("--archs", archs))
    if image_sizes.strip():
        out["image_size"] = _numbers("--image-sizes", image_sizes, int)
    option = {"lr": "--lr-range", "epochs": "--epochs-range", "batch_size": "--batch-sizes", "arch": "--archs",
              "image_size": "--image-sizes"}
    for name in out:
        if name in static:
            raise UserError(f"--hp {name}={static[name]}: {name} is tuned by {option[name]}; leave out one of them")
        if len(set(out[name])) != len(out[name]):
            raise UserError(f"{option[name]}: a value is given twice")
    # every end of every range with the static hyperparameters, by the container's rules
    for name, values in out.items():
        for v in values:
            validate({**static, name: str(v)}, origin={name: option[name]})
    return out

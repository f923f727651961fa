"""MLflow experiment tracking of a training run: `bincounter train --mlflow URI` (or MLFLOW_TRACKING_URI).

One MLflow run per training run, written by rank 0 alone: the settings as params, every epoch's metric line as
metrics (step = epoch), the test metrics, the rules that fired (tag `bincounter.rules` + rules.json), the reports
(training_curves.png, test_confusion_matrix.png, metrics.json, ...) at the run's root and the model folder's files
(model.safetensors, config.json, model.onnx) under `model/`. A run resumed from a checkpoint logs the restored
epochs too, so the run holds the whole history.

Names, so every number leads back to the job that made it:
* experiment: --mlflow-experiment (`sm tune` sets it to the tuning job's name: its trials are runs of one
  experiment), else MLFLOW_EXPERIMENT_NAME, else "bincounter";
* run name: the SageMaker training job's name (TRAINING_JOB_NAME, set by SageMaker in the container), else
  MLFLOW_RUN_NAME, else MLflow's own; tags `sagemaker.training_job(_arn)`, and `bincounter.from_trial`
  (--mlflow-from-trial: `sm train --from-tuning-job` names the best trial it took its hyperparameters from).

The URI: an http(s) tracking server, a local folder / file: / sqlite: store, or a SageMaker managed MLflow
tracking server's ARN (`arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME`, or `mlflow-app/...`),
which needs the `sagemaker-mlflow` plugin (in the image; it signs requests with the job's role).

Failure policy: tracking that was asked for but cannot start (server unreachable, ARN without the plugin, a
deleted experiment) is one line before the first epoch, not hours of training that leave no trace. A logging
call that fails later is a WARNING and training goes on (the model is saved locally regardless); the run ends
FAILED with the error's first line as tag `bincounter.error` when training fails.

The only module that imports mlflow, and only in `start()`: without tracking, mlflow is never imported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import time
from pathlib import Path

from .errors import UserError

log = logging.getLogger("bincounter")

DEFAULT_EXPERIMENT = "bincounter"
#: values of --mlflow (or MLFLOW_TRACKING_URI) that turn tracking off
OFF = ("off", "none", "false", "no", "0")
#: a SageMaker managed MLflow tracking server (or MLflow app) ARN
ARN_RE = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:(mlflow-tracking-server|mlflow-app)/[A-Za-z0-9-]+$")
#: the model folder's files logged under `model/` (the rest of model_dir are reports, logged at the root)
MODEL_FILES = ("model.safetensors", "config.json", "model.onnx", "model.int8.onnx")
#: report files logged at the run's root when present (artifact.RESULT_FILES less what is written after training)
REPORT_FILES = ("metrics.json", "rules.json", "test_metrics.json", "test_confusion_matrix.png", "training_curves.png",
                "profile")


def resolve_uri(flag: str | None, env: dict | None = None) -> str | None:
    """The tracking URI a run uses: --mlflow, else MLFLOW_TRACKING_URI; None (no tracking) when neither is set or
    the value is one of OFF (so `--mlflow off` turns off tracking an environment variable asked for)."""
    env = os.environ if env is None else env
    value = flag if flag is not None else env.get("MLFLOW_TRACKING_URI")
    if value is None or not value.strip() or value.strip().lower() in OFF:
        return None
    return value.strip()


def uri_kind(uri: str) -> str:
    """'arn' (SageMaker managed MLflow), 'http' (a tracking server), 'local' (a folder, file:, sqlite:), or
    'other' (a scheme a plugin handles, e.g. databricks)."""
    low = uri.lower()
    if low.startswith("arn:"):
        return "arn"
    if low.startswith(("http://", "https://")):
        return "http"
    if "://" not in uri and not low.startswith(("databricks", "arn:")) or low.startswith(("file:", "sqlite:")):
        return "local"
    return "other"


def check_uri(uri: str, where: str | None = None, *, remote: bool = False) -> str:
    """Refuse a URI that cannot work, in one line; -> its kind. `remote`: the run happens in a SageMaker job, so
    a store on this machine (a folder, file:, sqlite:, localhost) is refused: the job cannot reach it."""
    kind, where = uri_kind(uri), where or f"--mlflow {uri}"
    if kind == "arn" and not ARN_RE.match(uri):
        raise UserError(f"{where}: not a SageMaker MLflow tracking server ARN (expected arn:aws:sagemaker:"
                        "REGION:ACCOUNT:mlflow-tracking-server/NAME, or .../mlflow-app/NAME)")
    if kind == "http" and not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", uri):
        raise UserError(f"{where}: not an http(s) URL of an MLflow tracking server")
    if remote:
        host = re.sub(r"^https?://([^/:]+).*$", r"\1", uri).lower() if kind == "http" else ""
        if kind == "local" or host in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
            raise UserError(f"{where}: a SageMaker job cannot reach a store on this machine; give the URL "
                            "of a tracking server the job can reach, or a SageMaker MLflow tracking server's ARN")
    return kind


def _plugin_check(uri: str) -> None:
    if uri_kind(uri) == "arn" and importlib.util.find_spec("sagemaker_mlflow") is None:
        raise UserError(f"--mlflow {uri}: a SageMaker MLflow tracking server needs the sagemaker-mlflow plugin "
                        "(pip install sagemaker-mlflow; the image has it)")


def _plugin_quirks(uri: str) -> None:
    """sagemaker-mlflow 0.5's request-header provider is active for every URI and reads the process-wide tracking
    URI (not the client's): so that URI is set to ours (an ARN gets its routing header), and for a URI that is not
    an ARN, its per-request WARNING ("list index out of range": it parses the URI as an ARN) is silenced.
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI "for subprocesses"; that export is undone, so a
    library caller's later subprocesses (another `bincounter train`, say) do not start tracking to our server."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    if uri_kind(uri) != "arn" and importlib.util.find_spec("sagemaker_mlflow") is not None:
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(text[0] if text else '')[:300]}"


def _flat(prefix: str, value, out: dict) -> dict:
    """Numeric leaves of a nested dict as metric names joined with '_' (bools, None, lists, text left out)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}_{k}", v, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


class Tracker:
    """One MLflow run, through `MlflowClient` (explicit run ids: no process-global active run)."""

    def __init__(self, client, run_id: str, experiment_id: str, uri: str):
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri
        self.logged_epochs: set[int] = set()
        self.errors = 0

    def _try(self, what: str, fn, *a, **kw) -> None:
        try:
            fn(*a, **kw)
        except Exception as e:  # the server went away mid-run: say so, keep training
            self.errors += 1
            log.warning("mlflow: could not log %s to run %s (%s); training goes on", what, self.run_id,
                        _first_line(e))

    def log_history(self, history: list[dict]) -> None:
        """The epoch rows not logged yet (a resumed run's restored epochs included), one batch call."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"])) for row in history
                   if int(row["epoch"]) not in self.logged_epochs
                   for k, v in row.items() if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)]
        if metrics:
            self._try("the epoch metrics", self.client.log_batch, self.run_id, metrics=metrics)
        self.logged_epochs.update(int(row["epoch"]) for row in history)

    def _log_rules(self, fired: list[dict], out_dir: Path) -> None:
        self._try("the rules", self.client.set_tag, self.run_id, "bincounter.rules",
                  ",".join(r["rule"] for r in fired) or "none")
        if (out_dir / "rules.json").is_file():
            self._try("rules.json", self.client.log_artifact, self.run_id, str(out_dir / "rules.json"))

    def finish(self, result: dict, fired: list[dict], out_dir: str | Path, model_dir: str | Path) -> None:
        """The run's end: the last epochs, test metrics, rules, reports, the model files; status FINISHED."""
        from mlflow.entities import Metric

        out_dir, model_dir = Path(out_dir), Path(model_dir)
        self.log_history(result.get("history") or [])
        final = {"rules_fired": result.get("rules_fired", 0)}
        if result.get("best"):
            final["best_val_acc"] = result["best"]["val_acc"]
            final["best_epoch"] = result["best"]["epoch"]
        if result.get("test"):
            _flat("test", {k: v for k, v in result["test"].items() if k != "confusion_matrix"}, final)
        # at the last epoch's step, like the trainer's final line: the run's rules_fired is then the count in
        # rules.json (end-of-run rules included), as the tuner's last value is
        step = int(result["history"][-1]["epoch"]) if result.get("history") else 0
        now = int(time.time() * 1000)
        self._try("the final metrics", self.client.log_batch, self.run_id,
                  metrics=[Metric(k, float(v), now, step) for k, v in final.items() if not math.isnan(float(v))])
        self._try("the model version", self.client.set_tag, self.run_id, "bincounter.model_version",
                  str(result.get("model_version")))
        self._log_rules(fired, out_dir)
        for name in REPORT_FILES:
            p = out_dir / name
            if name == "rules.json" or not p.exists():
                continue
            if p.is_dir():
                self._try(name, self.client.log_artifacts, self.run_id, str(p), name)
            else:
                self._try(name, self.client.log_artifact, self.run_id, str(p))
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                self._try(f"model/{name}", self.client.log_artifact, self.run_id, str(model_dir / name), "model")
        if self.errors:
            self._try("the error count", self.client.set_tag, self.run_id, "bincounter.tracking_errors",
                      str(self.errors))
        self._try("the run's end", self.client.set_terminated, self.run_id, "FINISHED")
        log.info("mlflow: run %s finished (%s)", self.run_id, self.link())

    def fail(self, error: BaseException, fired: list[dict] | None, out_dir: str | Path | None) -> None:
        """Training stopped: the epochs so far, the rules that fired (a NaN stop is one), the error; FAILED (KILLED
        on Ctrl-C)."""
        if fired is not None and out_dir is not None:
            self._log_rules(fired, Path(out_dir))
        self._try("the error", self.client.set_tag, self.run_id, "bincounter.error", _first_line(error))
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self._try("the run's end", self.client.set_terminated, self.run_id, status)
        log.info("mlflow: run %s ended %s (%s)", self.run_id, status, self.link())

    def link(self) -> str:
        if uri_kind(self.uri) == "http":
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.uri}, experiment {self.experiment_id}"


def _experiment_id(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"--mlflow {uri}: experiment {name!r} is deleted there: restore it (mlflow experiments "
                            "restore) or name another (--mlflow-experiment)")
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as e:  # parallel tuning trials: another one created it first
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def params_of(config: dict) -> dict[str, str]:
    """The run's params: the TrainConfig fields (not `extra`, not the tracking settings), as strings."""
    return {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in config.items()
            if k != "extra" and not k.startswith("mlflow")}


def start(uri: str, *, config: dict, experiment: str | None = None, from_trial: str | None = None,
          world_size: int = 1, env: dict | None = None) -> Tracker:
    """Open the run (experiment created when missing), log the params and the tags; a URI that cannot work or a
    server that does not answer is one line (UserError)."""
    env = os.environ if env is None else env
    check_uri(uri)
    _plugin_check(uri)
    try:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(f"--mlflow {uri}: the MLflow client is not installed (pip install 'bincounter[mlflow]', "
                        "or mlflow-skinny)") from None
    name = experiment or env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    job = env.get("TRAINING_JOB_NAME")
    tags = {"mlflow.source.name": "bincounter train", "mlflow.source.type": "JOB"}
    if job:
        tags["sagemaker.training_job"] = job
    if env.get("TRAINING_JOB_ARN"):
        tags["sagemaker.training_job_arn"] = env["TRAINING_JOB_ARN"]
    if from_trial:
        tags["bincounter.from_trial"] = from_trial
    _plugin_quirks(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp_id = _experiment_id(client, name, uri)
        run = client.create_run(exp_id, run_name=job or env.get("MLFLOW_RUN_NAME") or None, tags=tags)
        params = {**params_of(config), "world_size": str(world_size)}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--mlflow {uri}: cannot start an MLflow run in experiment {name!r} ({_first_line(e)}); "
                        "fix the URI or the server, or train without --mlflow") from None
    tracker = Tracker(client, run.info.run_id, exp_id, uri)
    log.info("mlflow: run %s in experiment %r (%s)", tracker.run_id, name, tracker.link())
    return tracker

"""`bincounter sm ...`: the SageMaker client's sub-commands, registered in the order `--help` lists them. Each
command module turns its flags into a spec (`sm.specs`) and an `AwsTarget` and calls the job module that checks,
prices and sends it (`sm.training`, `sm.tuning`, `sm.endpoint`, `sm.batch`, `sm.delete`, `sm.follow`, ...):
inputs checked locally first (the hyperparameters with the trainer's own rules, the tuning ranges, the role), an
estimated cost line, then the request(s) printed with --dry-run (no network call, no credentials) or sent, with
what was created, where to look and how to undo it.

  cli/sm_jobs.py      tune, train, batch
  cli/sm_endpoint.py  deploy, update, rollback, predict, evaluate, delete
  cli/sm_follow.py    status, logs, report, collect
  cli/sm_pipeline.py  pipeline upsert, start, status, local
  cli/sm_policy.py    policy
  cli/sm_monitor.py   monitor (drift watch; also `process monitor`)
"""

from __future__ import annotations

import argparse

from ..sm import cost
from . import sm_endpoint, sm_follow, sm_jobs, sm_monitor, sm_pipeline, sm_policy
from .sm_common import text


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one: no "(default: None)" on required options or unset ones."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_arguments(sub) -> None:
    """Every `bincounter sm` sub-command, each with its flags, its help and its `func`."""
    sm_jobs.add_tune(sub, _Help)
    sm_jobs.add_train(sub, _Help)
    sm_endpoint.add_deploy(sub, _Help)
    sm_endpoint.add_update(sub, _Help)
    sm_endpoint.add_rollback(sub, _Help)
    sm_endpoint.add_predict(sub, _Help)
    sm_endpoint.add_evaluate(sub, _Help)
    sm_jobs.add_batch(sub, _Help)
    sm_endpoint.add_delete(sub, _Help)
    sm_monitor.add_monitor(sub, _Help)
    sm_pipeline.add_arguments(sub, _Help)
    sm_follow.add_status(sub, _Help)
    sm_follow.add_logs(sub, _Help)
    sm_follow.add_report(sub, _Help)
    sm_follow.add_collect(sub, _Help)
    sm_policy.add_policy(sub, _Help)


def epilog() -> str:
    """`bincounter sm --help`'s closing lines: the one place the priced instance types are listed."""
    t = cost.table()
    return text(f"Instance types in the price table ({t['region']}, {t['as_of']}; others: pass --price-per-hour "
                f"for the cost line): {', '.join(cost.instance_types())}.")

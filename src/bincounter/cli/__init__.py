"""`bincounter` command line: the top parser is a list of command groups, one module each (`data`, `model` for
train/evaluate/export/predict/report, `ecr`, `sm`, `weights`, `process`, `demo`), thin wrappers over the
library functions.

Every user mistake surfaces as one line on stderr and exit code 2 (`UserError`); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import UserError, write_failure_file
from . import data, demo, ecr, model, process, sm, weights
from .base import Formatter, Parser


def add_sm(sub) -> None:
    """The `sm` group: its actions are cli/sm.py's."""
    smp = sub.add_parser("sm", help="SageMaker jobs, endpoints and the pipeline with the custom image (its "
                         "actions are listed below)", formatter_class=Formatter,
                         description="Run the image on SageMaker. Every command prints what it created and how "
                         "to undo it; --dry-run prints the API request(s) instead of sending them.")
    sm.add_arguments(smp.add_subparsers(dest="sm_command", required=True, metavar="ACTION"))
    smp.epilog = sm.epilog()


#: each adds its top-level command(s) to `bincounter`, in the order `bincounter --help` lists them
GROUPS = (data.register, model.register, ecr.register, add_sm, weights.register, process.register, demo.register)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="bincounter", formatter_class=Formatter,
        description="Count the items (1..5) in Amazon Bin Image Dataset photos with EfficientNet.\n\n"
        "Typical flow:\n"
        "  bincounter data synth data/abid --per-class 40     # or fetch real ABID bins\n"
        "  bincounter data split data/abid --out data/channels\n"
        "  bincounter train --train data/channels/train --val data/channels/val \\\n"
        "                   --test data/channels/test --model-dir model --no-pretrained\n"
        "  bincounter predict --model-dir model some_bin.jpg")
    p.add_argument("--version", action="version", version=f"bincounter {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in GROUPS:
        register(sub)
    _quiet_anywhere(p)
    p.epilog = _command_list(p)
    return p


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(path, help) of every listed sub-command below `parser`, depth first. A sub-command without a help text
    (the internal `ecr`) is not listed, as argparse does not list it either."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                path = (*prefix, choice.dest)
                yield path, choice.help
                yield from _subcommands(action.choices[choice.dest], path)


def _command_list(parser: argparse.ArgumentParser) -> str:
    """The top-level help's list of every step/action of the command groups, one line each (the text up to its
    first '; '), generated from the parsers themselves so that no command can be left out."""
    rows = [(" ".join(path), text.split("; ")[0]) for path, text in _subcommands(parser) if len(path) > 1]
    width = max(len(path) for path, _ in rows) + 2
    return ("steps and actions of the command groups (bincounter COMMAND ACTION --help for each):\n"
            + "\n".join(f"  {path:<{width}}{text}" for path, text in rows))


def _quiet_anywhere(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet also after the subcommand (`bincounter sm train ... -q`), not only before it. SUPPRESS: a
    subcommand that is not given -q leaves the top-level value alone."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "-q" not in sub._option_string_actions:
                    sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                     help="warnings and errors only")
                _quiet_anywhere(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "boto3", "urllib3"):  # "Found credentials/endpoint ..." on every client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "sm_command", None) and not getattr(args, "verbose", False):
        from ..sm.sdk_compat import quiet_sdk_logs

        quiet_sdk_logs()
    try:
        return args.func(args)
    except UserError as e:
        print(f"bincounter: error: {e}", file=sys.stderr)
        write_failure_file(str(e))
        return 2
    except KeyboardInterrupt:
        print("bincounter: interrupted", file=sys.stderr)
        return 130

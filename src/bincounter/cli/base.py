"""What every `bincounter` command group builds its parsers with: the help formatter and the parser class that
answers a usage mistake in one line and exit 2, like a `UserError`."""

from __future__ import annotations

import argparse
import sys

from ..errors import write_failure_file


def not_empty(text: str) -> str:
    """argparse type of a flag whose empty value would silently mean "none": `--kms-key "$KEY"` with KEY unset must
    not turn off the project config's key (a usage error instead; leave the flag out for the config's value)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (an unset shell variable?): give a value, or leave the flag out to "
                                         "use the project config's")
    return text


def fraction(text: str) -> float:
    """argparse type of a fraction in [0, 1] (NaN and text refused)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return v


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default where it has one: no "(default: None)" on unset options, no "(default: False)" on
    plain switches."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A usage mistake (a bad value, an unknown option, a missing argument) is one line and exit 2, like a
    `UserError`, with where to read up instead of argparse's usage block:
    `bincounter: error: argument --epochs: 'x' is not an integer (see bincounter train --help)`.
    --help is argparse's own. Sub-commands get this class too (add_subparsers uses the parent's class)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_cmd_prog"):  # the innermost sub-command returns first: unknown options are its
            ns._cmd_prog = self.prog
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        prog = vars(ns).pop("_cmd_prog", self.prog)
        if extras:  # argparse reports these from the top parser; name the sub-command they were given to
            self._fail(f"unrecognized arguments: {' '.join(extras)}", prog)
        return ns

    def error(self, message):
        self._fail(message, self.prog)

    @staticmethod
    def _fail(message: str, prog: str):
        print(f"bincounter: error: {message} (see {prog} --help)", file=sys.stderr)
        write_failure_file(message)
        sys.exit(2)

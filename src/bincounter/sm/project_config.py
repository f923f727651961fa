"""The project config: one TOML file every `bincounter sm` command reads, so the role, region, tags, VPC, KMS key and
instance type are set once, not passed as flags forever. A flag given on the command line wins over the file, the
file over the built-in default; `resolve` says which one each value came from (a dry run prints it).

The file: `--config FILE`, else $BINCOUNTER_CONFIG, else ./bincounter.toml if it exists. Its [sm] table:

    [sm]
    role = "arn:aws:iam::123456789012:role/bincounter-sm"
    region = "eu-west-1"
    project = "bin-counter"              # the `project` tag (default: bincounter)
    instance_type = "ml.g5.xlarge"
    subnets = ["subnet-0123abcd"]
    security_groups = ["sg-0123abcd"]
    kms_key = "arn:aws:kms:eu-west-1:123456789012:key/..."
    isolation = true
    inter_container_encryption = false
    [sm.tags]
    team = "vision"

The SageMaker SDK's own config.yaml (defaults it applies itself) still applies to a real run; this file is ours,
read by every `sm` command alike.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

DEFAULT_FILE = "bincounter.toml"
ENV = "BINCOUNTER_CONFIG"
# key -> (type, what it sets)
KEYS: dict[str, tuple[type, str]] = {
    "role": (str, "--role"),
    "region": (str, "--region"),
    "profile": (str, "--profile"),
    "project": (str, "the project tag"),
    "instance_type": (str, "--instance-type"),
    "tags": (dict, "--tag (added to, a --tag of the same key wins)"),
    "subnets": (list, "--subnets"),
    "security_groups": (list, "--security-groups"),
    "kms_key": (str, "--kms-key"),
    "isolation": (bool, "--isolation"),
    "inter_container_encryption": (bool, "--inter-container-encryption"),
}
HELP = (f"Project config: --config FILE, else ${ENV}, else ./{DEFAULT_FILE}; its [sm] table sets "
        + ", ".join(KEYS) + " (a flag wins over the file; a dry run says where each value came from).")


@dataclass(frozen=True)
class ProjectConfig:
    path: Path | None = None  # None: no file
    values: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "default"

    def get(self, key: str, default=None):
        return self.values.get(key, default)


def find(path: str | None = None) -> Path | None:
    """The file in use: the path given, else $BINCOUNTER_CONFIG, else ./bincounter.toml (None if it is absent)."""
    given = path or os.environ.get(ENV)
    if given:
        p = Path(given)
        if not p.is_file():
            raise UserError(f"config {given}: no such file ({'--config' if path else '$' + ENV})")
        return p
    p = Path(DEFAULT_FILE)
    return p if p.is_file() else None


def load(path: str | None = None) -> ProjectConfig:
    """Read and check the [sm] table (unknown keys and wrong types are one line each)."""
    p = find(path)
    if p is None:
        return ProjectConfig()
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"config {p}: {e}") from None
    for k in doc:
        if k != "sm":
            raise UserError(f"config {p}: {k} at the top level is not read" + (": put it under [sm] (its keys "
                            "go below that line)" if k in KEYS else "; bincounter reads the [sm] table only"))
    sm = doc.get("sm", {})
    if not isinstance(sm, dict):
        raise UserError(f"config {p}: [sm] must be a table")
    for k, v in sm.items():
        if k not in KEYS:
            from ..archs import close_matches

            close = close_matches(k, list(KEYS), n=1, cutoff=0.6)
            raise UserError(f"config {p}: unknown key sm.{k}" + (f" (did you mean {close[0]}?)" if close else
                                                                 f"; keys: {', '.join(KEYS)}"))
        want = KEYS[k][0]
        if not isinstance(v, want) or (want is list and not all(isinstance(x, str) for x in v)) or \
                (want is dict and not all(isinstance(x, str) for x in v.values())):
            raise UserError(f"config {p}: sm.{k} must be a {want.__name__}"
                            + (" of strings" if want in (list, dict) else "") + f", got {v!r}")
    return ProjectConfig(p, dict(sm))


def resolve(given, key: str, config: ProjectConfig, flag: str, default=None) -> tuple:
    """(value, where it came from): the flag if given (not None), else the file's, else `default`."""
    if given is not None:
        return given, flag
    if key in config.values:
        return config.values[key], config.source
    return default, "default"

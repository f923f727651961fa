"""build_and_push.sh's default tag, in a scratch git repository (no Docker needed for --print-tag)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO, assert_one_line_error, run_cli


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _tag(repo):
    proc = subprocess.run([str(repo / "build_and_push.sh"), "--print-tag"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_default_tag_is_dirty_whenever_the_image_would_differ_from_the_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "docs").mkdir()
    shutil.copy(REPO / "build_and_push.sh", repo / "build_and_push.sh")
    (repo / "src" / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "docs" / "notes.md").write_text("notes\n")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = _git(repo, "rev-parse", "--short=12", "HEAD")
    assert _tag(repo) == sha
    (repo / "docs" / "notes.md").write_text("changed\n")  # not in the image: still the clean SHA
    assert _tag(repo) == sha
    (repo / "src" / "pkg" / "new.py").write_text("y = 2\n")  # untracked, but COPY src puts it in the image
    dirty = _tag(repo)
    assert dirty.startswith(f"{sha}-dirty-")
    (repo / "src" / "pkg" / "new.py").write_text("y = 3\n")  # another content: another tag
    assert _tag(repo) not in (sha, dirty)
    (repo / "src" / "pkg" / "new.py").unlink()
    (repo / "src" / "pkg" / "a.py").write_text("x = 2\n")  # a tracked change
    assert _tag(repo).startswith(f"{sha}-dirty-")


# ------------------------------------------------------------------ issue 26.3: what `docker build .` sends
#: the working folders the README tells users to create in the checkout (data/abid, data/channels, data/shards,
#: model, weights/lite0, reports/eda, runs/...): none may go into the build context or into git
WORKING_FOLDERS = ("data", "data/abid", "data/channels", "data/shards", "model", "weights", "weights/lite0",
                   "reports", "reports/eda", "runs", "runs/pipeline")


def _ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rules (moby/patternmatcher): patterns are rooted at the context, `*` and `?` stay
    within one path element, `**` spans any number, a match on a parent directory excludes what is below it,
    `!` re-includes, the last matching pattern wins."""
    import re

    def regex(p: str) -> re.Pattern:
        out, i = "", 0
        while i < len(p):
            if p.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif p.startswith("**", i):
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(f"^{out}$")

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip().strip("/")
        if pat and any(regex(pat).match(c) for c in candidates):
            ignored = not neg
    return ignored


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_the_build_context_holds_what_the_image_copies_and_no_working_folder():
    """Issue 26.3: after following the README, `docker build` sent 84 MB of context (data/, model/, ...) instead
    of 1 MB; all of ABID would be tens of GB per build."""
    import re

    patterns = _dockerignore()
    for folder in WORKING_FOLDERS:
        assert _ignored_by_docker(f"{folder}/x.jpg", patterns), folder
    assert _ignored_by_docker("src/bincounter/__pycache__/cli.cpython-311.pyc", patterns)
    # everything the Dockerfile copies from the context is sent (the package's own data/ subpackage included)
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.+)\s+\S+\s*$", line)
        if m:
            sources += m.group(1).split()
    assert "src" in sources and "pyproject.toml" in sources, sources
    for src in sources + ["src/bincounter/data/s3.py", "src/bincounter/data/__init__.py"]:
        assert not _ignored_by_docker(src, patterns), src
        assert (REPO / src).exists(), src


def test_git_ignores_the_working_folders_but_not_the_package():
    """The same folders in .gitignore, rooted (/data/): src/bincounter/data/ is the package's, not the user's."""
    files = [f"{d}/x.jpg" for d in WORKING_FOLDERS] + ["src/bincounter/data/s3.py", "src/bincounter/data/new.py",
                                                        "tests/data/x.json"]
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "-v", "--stdin"],
                          input="\n".join(files),
                          capture_output=True, text=True)
    ignored = {ln.split("\t")[-1] for ln in proc.stdout.splitlines()}
    assert ignored == {f"{d}/x.jpg" for d in WORKING_FOLDERS}, proc.stdout


@pytest.mark.parametrize("step", ["account", "region"])
def test_the_scripts_no_credentials_line_names_only_options_it_has(moto_endpoint, aws_env, step):
    """Issue 26.9: without credentials the script's AWS step (`bincounter ecr ...`) said "--dry-run needs none";
    build_and_push.sh has no --dry-run (--no-push builds without AWS)."""
    import re

    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    args = ("-q", "ecr", "account", "--endpoint-url", moto_endpoint) if step == "account" else (
        "-q", "ecr", "ensure-repo", "bc-nocreds", "--endpoint-url", moto_endpoint)
    proc = run_cli(*args, env=env)
    assert_one_line_error(proc, "no AWS credentials found", "--no-push")
    line = proc.stderr.strip().splitlines()[-1]
    usage = subprocess.run([str(REPO / "build_and_push.sh"), "--help"], capture_output=True, text=True).stdout
    for option in re.findall(r"--[a-z][a-z-]+", line):
        assert option in usage, (option, line)

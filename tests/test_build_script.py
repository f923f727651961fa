"""build_and_push.sh's default tag, in a scratch git repository (no Docker needed for --print-tag)."""

from __future__ import annotations

import shutil
import subprocess

from .conftest import REPO


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

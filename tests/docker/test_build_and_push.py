"""./build_and_push.sh end to end: ECR/STS API from moto (server mode), a real registry (Debian's
docker-registry) on loopback, a real Docker daemon. No mocking of docker or AWS."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from ..conftest import REPO, free_port
from ..helpers import docker, http, wait_for

BASE = os.environ.get("BINCOUNTER_BASE_IMAGE", "bincounter-base:bookworm")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(exe):
        pytest.fail("Debian's docker-registry is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    cfg = root / "config.yml"
    cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                   f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    wait_for(lambda: _up(f"http://{host}/v2/"), 30, what="the registry")
    yield host
    proc.terminate()
    proc.wait(10)
    # the pushes left local tags HOST/repo:tag behind (HOST: this run's port): remove them
    refs = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    mine = [r for r in refs if r.startswith(f"{host}/")]
    if mine:
        subprocess.run(["docker", "rmi", "-f", *mine], capture_output=True)


def _up(url):
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


@pytest.fixture()
def tiny_context(tmp_path):
    """A small image built through the real script (the full image would push gigabytes)."""
    (tmp_path / "Dockerfile").write_text('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY marker.txt /marker.txt\n'
                                         'CMD ["cat", "/marker.txt"]\n')
    marker = f"bincounter-push-{time.time_ns()}"
    (tmp_path / "marker.txt").write_text(marker + "\n")
    return tmp_path, marker


def _script(*args, env=None):
    full_env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run([str(REPO / "build_and_push.sh"), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=600)


def _common(moto_endpoint, ctx):
    return ["--endpoint-url", moto_endpoint, "--base-image", BASE, "--file", ctx / "Dockerfile", "--context", ctx]


def test_push_round_trip_and_idempotent_rerun(image, registry, moto_endpoint, aws_env, tiny_context):
    import boto3

    ctx, marker = tiny_context
    proc = _script(*_common(moto_endpoint, ctx), "--registry", registry, "--tag", "t1", "bc-push")
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = proc.stdout.strip()
    assert uri == f"{registry}/bc-push:t1"  # stdout holds the URI and nothing else
    assert "created" not in proc.stdout and "pushed" in proc.stderr
    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]].count("bc-push") == 1
    # pull back by digest and run
    import re

    digest = re.search(r"pushed \S+:t1 \(digest: (sha256:[0-9a-f]{64})\)", proc.stderr).group(1)
    for t in ("t1", "latest"):
        docker("rmi", f"{registry}/bc-push:{t}")
    docker("pull", f"{registry}/bc-push@{digest}")
    run = docker("run", "--rm", f"{registry}/bc-push@{digest}")
    assert run.stdout.strip() == marker
    docker("rmi", f"{registry}/bc-push@{digest}", check=False)
    # rerun: no error, same repository, same tag when nothing changed
    again = _script(*_common(moto_endpoint, ctx), "--registry", registry, "--tag", "t1", "bc-push")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == uri
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]].count("bc-push") == 1


def test_default_tag_is_the_git_sha(image, registry, moto_endpoint, aws_env, tiny_context):
    ctx, _ = tiny_context
    proc = _script(*_common(moto_endpoint, ctx), "--registry", registry, "--no-latest", "bc-sha")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    tag = proc.stdout.strip().rsplit(":", 1)[1]
    assert tag.startswith(sha)
    assert http("HEAD", f"http://{registry}/v2/bc-sha/manifests/latest")[0] == 404  # --no-latest


@pytest.mark.parametrize("case", ["no-credentials", "unknown-region", "daemon-down", "registry-unreachable"])
def test_failures_are_one_line_and_nothing_reported_pushed(image, registry, moto_endpoint, aws_env,
                                                           tiny_context, case):
    ctx, _ = tiny_context
    args, env, needle = list(_common(moto_endpoint, ctx)) + ["--registry", registry], {}, ""
    if case == "no-credentials":
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
        needle = "no AWS credentials found"
    elif case == "unknown-region":
        args += ["--region", "mars-north-1"]
        needle = "unknown AWS region"
    elif case == "daemon-down":
        env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
        needle = "Docker daemon is not reachable"
    else:
        args[args.index("--registry") + 1] = f"127.0.0.1:{free_port()}"
        needle = "failed"
    proc = _script(*args, "--tag", "bad", "bc-fail", env=env)
    assert proc.returncode != 0
    assert proc.stdout == ""  # no URI: nothing reported as pushed
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

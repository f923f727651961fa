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
    assert "--dry-run" not in errors[0]  # issue 26.9: the script has none
    assert "Traceback" not in proc.stderr


def test_a_failed_build_leaves_no_container_and_no_image_behind(image, tmp_path):
    """Issue 26.3: a failed build left a stopped container (the failing step's) and the layers it had made as
    dangling images. --force-rm removes the container; the script removes the images this build made (not the
    base, nor layers it took from the cache)."""
    marker = f"bc-failed-build-{time.time_ns()}"
    (tmp_path / "Dockerfile").write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nLABEL bincounter.test={marker}\n"
                                         f"RUN echo {marker} > /step.txt\nRUN echo {marker} && exit 3\n")
    base_id = docker("image", "inspect", "-f", "{{.Id}}", BASE).stdout.strip()
    try:
        proc = _script("--no-push", "--base-image", BASE, "--file", tmp_path / "Dockerfile", "--context", tmp_path,
                       "--tag", "t", "bc-failed-build")
        assert proc.returncode != 0 and proc.stdout == ""
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "docker build failed" in errors[0], proc.stderr[-2000:]
        left = docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Status}} {{.Command}}").stdout
        assert marker not in left, left
        assert docker("images", "-a", "-q", "--filter", f"label=bincounter.test={marker}").stdout.strip() == ""
        assert docker("image", "inspect", "-f", "{{.Id}}", BASE).stdout.strip() == base_id  # the base stays
    finally:  # what a failing run of this test left
        for line in docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}").stdout.splitlines():
            if marker in line:
                docker("rm", "-f", line.split()[0], check=False)
        for image_id in docker("images", "-a", "-q", "--filter", f"label=bincounter.test={marker}").stdout.split():
            docker("rmi", image_id, check=False)

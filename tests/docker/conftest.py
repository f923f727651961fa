"""Docker tier: real containers from the real image (`container/build_local.sh` builds bincounter:local).

Every test here is marked `docker`. Without a daemon or image the tier is skipped, unless
BINCOUNTER_REQUIRE_DOCKER=1 (set by `make test`, i.e. in CI), where that is a failure. (Tests marked
`acceptance` are skipped unless BINCOUNTER_ACCEPTANCE=1: tests/conftest.py.)
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

IMAGE = os.environ.get("BINCOUNTER_IMAGE", "bincounter:local")
CPU_IMAGE = os.environ.get("BINCOUNTER_CPU_IMAGE", "bincounter:cpu")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


def _require(image: str, build: str) -> str:
    ok = subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    if not ok:
        msg = f"Docker image {image} not available (build it: {build})"
        if os.environ.get("BINCOUNTER_REQUIRE_DOCKER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return image


@pytest.fixture(scope="session")
def image() -> str:
    """The default image (target gpu): trains and serves with PyTorch."""
    return _require(IMAGE, "make image")


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU serving image (target serve-cpu): ONNX Runtime, no PyTorch."""
    return _require(CPU_IMAGE, "make image-cpu")


@pytest.fixture()
def names(request):
    """Unique container/network names, removed after the test whatever happens."""
    made: list[tuple[str, str]] = []

    def new(kind: str = "container") -> str:
        n = f"bct-{uuid.uuid4().hex[:8]}"
        made.append((kind, n))
        return n

    yield new
    for kind, n in reversed(made):
        if kind == "container":
            subprocess.run(["docker", "rm", "-f", n], capture_output=True)
        else:
            subprocess.run(["docker", "network", "rm", n], capture_output=True)

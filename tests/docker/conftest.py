"""Docker tier: real containers from the real image (`container/build_local.sh` builds bincounter:local).

Every test here is marked `docker`. Without a daemon or image the tier is skipped, unless
BINCOUNTER_REQUIRE_DOCKER=1 (set by `make test`, i.e. in CI), where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

IMAGE = os.environ.get("BINCOUNTER_IMAGE", "bincounter:local")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def image() -> str:
    ok = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
    if not ok:
        msg = f"Docker image {IMAGE} not available (build it: container/build_local.sh)"
        if os.environ.get("BINCOUNTER_REQUIRE_DOCKER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return IMAGE


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

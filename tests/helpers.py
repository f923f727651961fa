"""Helpers shared by the fast and Docker tiers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def make_opt_ml(root: Path, channels_src: Path | None, hps: dict, hosts=("algo-1",), current="algo-1",
                nic="eth0", channels=("train", "val", "test")) -> Path:
    """A SageMaker /opt/ml tree: config JSONs plus copies of the given channel folders."""
    cfg = root / "input" / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hps.items()}))
    (cfg / "resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": list(hosts), "network_interface_name": nic}))
    (cfg / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in channels}))
    for c in channels:
        dst = root / "input" / "data" / c
        if channels_src is not None:
            shutil.copytree(channels_src / c, dst)
        else:
            dst.mkdir(parents=True)
    for d in ("model", "output", "checkpoints"):
        (root / d).mkdir(exist_ok=True)
    return root


def docker(*args, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


def http(method: str, url: str, body: bytes | None = None, ctype: str | None = None, timeout=30):
    """-> (status, headers, body). Never raises for an HTTP status."""
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(pred, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def raw_exchange(host: str, port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to an HTTP server, read until it closes the connection (or `timeout` passes): everything
    it answered. For framing tests that an HTTP client library would refuse to send."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out

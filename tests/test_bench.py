"""The benchmarks run (smoke, --quick) and write well-formed JSON. No timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_train_pipeline_bench_quick(tmp_path):
    out = tmp_path / "tp.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_pipeline.py"), "--quick", "--out", str(out),
                           "--device", "cpu", "--options", "channels_last,bf16,gpu_decode"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["images_per_s"]) >= {"limit", "plain", "bincounter", "limit+channels_last",
                                        "bincounter+channels_last", "limit+bf16", "bincounter+bf16"}
    assert all(v > 0 for v in doc["images_per_s"].values())
    assert set(doc["ratios"]) == {"c/a", "c/b", "c/a+channels_last", "c/a+bf16"}
    assert "gpu_decode needs --device cuda; skipped" in proc.stderr  # said, not silently dropped
    assert any(line.startswith("ratio c/a (bincounter / limit)") for line in proc.stdout.splitlines())


@pytest.mark.slow
def test_fetch_bench_quick(tmp_path):
    out = tmp_path / "fetch.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fetch.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == [1, 8] and all(r["failed"] == 0 and r["files"] == 50 for r in rows)


@pytest.mark.slow
def test_gpu_check_runs_its_code_on_the_cpu(tmp_path):
    """bench/gpu_check.py is run on a lent GPU machine with no second try: its code is exercised here."""
    out = tmp_path / "gc.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    assert {k: r["status"] for k, r in rows.items()} == {
        "env": "ok", "train": "ok", "torchrun": "ok", "gpu_decode": "skipped", "predictor": "ok", "pinning": "skipped"}
    assert rows["train"]["augmentation_changes_per_epoch"] is True and rows["torchrun"]["val_n_exact"] is True


@pytest.mark.slow
def test_quality_bench_quick(tmp_path):
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--quick", "--losses", "ce,ordinal",
                           "--inits", "random", "--vary", "lr=1e-3,3e-3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [(s["variant"]["lr"], s["loss"]) for s in doc["summary"]] == [
        (1e-3, "ce"), (1e-3, "ordinal"), (3e-3, "ce"), (3e-3, "ordinal")]
    assert all(0 <= s["test_acc"]["mean"] <= 1 and s["test_rmse_expected"]["mean"] >= 0 for s in doc["summary"])
    assert "E[count] RMSE" in proc.stdout

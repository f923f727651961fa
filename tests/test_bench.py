"""The benchmarks run (smoke, --quick) and write well-formed JSON. No timing is asserted here."""

from __future__ import annotations

import json
import re
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
        "env": "ok", "train": "ok", "torchrun": "ok", "gpu_decode": "skipped", "predictor": "ok", "pinning": "skipped",
        "int8_cpu": "ok"}
    assert rows["train"]["augmentation_changes_per_epoch"] is True and rows["torchrun"]["val_n_exact"] is True
    int8 = rows["int8_cpu"]
    assert int8["U8S8 reduce_range (export's)"]["images_per_s_1_thread"] > 0 and int8["images"] > 0
    assert 0 <= int8["U8S8 (no reduce_range: --for-cpu vnni)"]["agreement"] <= 1
    assert isinstance(int8["cpu_flags"], list)


@pytest.mark.slow
def test_int8_speed_bench_runs(tmp_path):
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "int8_speed.py"), "--archs", "tf_efficientnet_lite0",
                           "--image-size", "32", "--threads", "1", "--batches", "1,2", "--rounds", "2",
                           "--seconds", "0.05", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["runs"][0]["rows"]
    assert {(r["model"], r["batch"]) for r in rows} == {
        (m, b) for m in ("fp32", "U8S8 reduce_range (export's default)", "U8S8 (--for-cpu vnni)",
                         "S8S8 (ONNX Runtime's default types)") for b in (1, 2)}
    assert all(r["images_per_s"] > 0 and r["vs_fp32"] > 0 for r in rows)
    assert all(r["vs_fp32"] == 1.0 for r in rows if r["model"] == "fp32")
    assert doc["options"]["batches"] == [1, 2] and doc["cpu"] and doc["onnxruntime"]
    assert isinstance(doc["cpu_flags"], list) and "| tf_efficientnet_lite0 32 px | U8S8 (--for-cpu vnni) | 1 | 2 |" \
        in proc.stdout


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


def test_cpu_cost_from_a_serve_result(tmp_path):
    """bench/cpu_cost.py on a bench/serve.py result: req/s per vCPU from the best configuration at concurrency 16,
    $ per million from the price table (checked by hand for ml.c6i.large: $0.102/h, 2 vCPUs), serverless sized
    from the container's memory with 25% headroom; a missing result is one line."""
    serve = {"date": "2026-12-07 12:00", "machine": "m x86_64 2 cpus", "cpus_per_container": 2,
             "request_bytes": 50_000,
             "containers": [
                 {"variant": "cpu fp32", "image": "cpu", "batch_size": 1, "max_batch_delay_ms": 0, "memory_mib": 900,
                  "rows": [{"concurrency": 1, "p50_ms": 10.0, "p99_ms": 12, "rps": 90},
                           {"concurrency": 16, "p50_ms": 90, "p99_ms": 120, "rps": 150}]},
                 {"variant": "cpu fp32", "image": "cpu", "batch_size": 4, "max_batch_delay_ms": 1, "memory_mib": 1000,
                  "rows": [{"concurrency": 1, "p50_ms": 11.0, "p99_ms": 13, "rps": 85},
                           {"concurrency": 16, "p50_ms": 80, "p99_ms": 110, "rps": 200}]}]}
    src = tmp_path / "serve.json"
    src.write_text(json.dumps(serve))
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_cost.py"), "--serve", str(src), "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["variants"]
    assert row["config"] == "batch 4/1ms" and row["rps_per_vcpu"] == 100
    c6i = next(i for i in row["instances"] if i["instance_type"] == "ml.c6i.large")
    assert c6i["usd_per_million"] == pytest.approx(0.102 / (200 * 3600) * 1e6)
    assert row["instances"][0]["usd_per_million"] <= row["instances"][-1]["usd_per_million"]
    assert not any(i["instance_type"].startswith(("ml.g", "ml.p")) for i in row["instances"])
    s = row["serverless"]  # 1000 MiB x 1.25 -> 2048 MB; 50 kB in
    assert s["memory_mb"] == 2048
    # billed at the fastest single request of any configuration (batch 1/0: 10 ms), not the best c=16 one's
    assert s["compute_usd_per_million"] == pytest.approx(2 * 0.00002 * 0.010 * 1e6)
    assert s["data_usd_per_million"] == pytest.approx(50_000 / 1e9 * 0.016 * 1e6)
    assert "ml.c6i.large" in proc.stdout and "serverless 2048 MB" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_cost.py"), "--serve", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "run bench/serve.py first" in proc.stderr
    src.write_text(json.dumps({**serve, "device": "gpu (--gpus all)"}))  # GPU figures priced as CPUs: refused
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_cost.py"), "--serve", str(src), "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "CPU prices need a CPU run" in proc.stderr


def _serve_bench():
    return _bench("serve")


def _bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_serve_bench_memory_parse_and_parallel_callers():
    """bench/serve.py's pieces that need no Docker: docker stats' MemUsage, and the in-process limit's callers
    running at once (three 0.3 s callers take ~0.3 s of wall time, not 0.9 s)."""
    import time

    sb = _serve_bench()
    assert sb.parse_mem_usage("45.3MiB / 1.9GiB") == pytest.approx(45.3)
    assert sb.parse_mem_usage("1.2GiB / 8GiB") == pytest.approx(1228.8)
    assert sb.parse_mem_usage("500MB / 2GB") == pytest.approx(500e6 / 2**20)
    assert sb.parse_mem_usage("") is None and sb.parse_mem_usage("--") is None

    class Caller:
        def run(self, batch, n):
            time.sleep(0.3)
            return [0.3] * n

    t0 = time.perf_counter()
    rps = sb.parallel_rps([Caller(), Caller(), Caller()], batch=4, n=2)
    wall = time.perf_counter() - t0
    assert wall < 0.6, wall  # one after another would take 0.9 s
    assert rps == pytest.approx(3 * 4 * 2 / wall, rel=0.2)


def test_serve_bench_server_cpus():
    """--server-cpus: docker's cpuset syntax parsed, the server's CPUs taken out of the client's, one-line refusals
    for a CPU this process may not use or a split that leaves the load generator none."""
    sb = _serve_bench()
    assert sb.cpu_set("1") == {1} and sb.cpu_set("0,2") == {0, 2} and sb.cpu_set("1-3") == {1, 2, 3}
    assert sb.split_cpus(None, {0, 1}) == ([], {0, 1})
    assert sb.split_cpus("1", {0, 1}) == (["--cpuset-cpus", "1"], {0})
    assert sb.split_cpus("2-3", {0, 1, 2, 3}) == (["--cpuset-cpus", "2,3"], {0, 1})
    for bad, needle in [("x", "expected CPU numbers"), ("3-1", "expected CPU numbers"), ("5", "may use CPUs [0, 1]"),
                        ("0-1", "leaves no CPU for the load generator")]:
        with pytest.raises(SystemExit, match=re.escape(needle)):
            sb.split_cpus(bad, {0, 1})


def test_cpu_cost_counts_only_the_servers_cpus(tmp_path):
    """A run with --server-cpus: the req/s came from the server's CPUs, not the host's (the client had the rest)."""
    serve = {"date": "2026-12-07 12:00", "machine": "m", "cpus_per_container": 2, "host_cpus": 2, "server_cpus": [1],
             "request_bytes": 50_000,
             "containers": [{"variant": "cpu fp32", "image": "cpu", "batch_size": 1, "max_batch_delay_ms": 0,
                             "memory_mib": 900,
                             "rows": [{"concurrency": 1, "p50_ms": 10.0, "p99_ms": 12, "rps": 90},
                                      {"concurrency": 16, "p50_ms": 90, "p99_ms": 120, "rps": 150}]}]}
    src, out = tmp_path / "serve.json", tmp_path / "cost.json"
    src.write_text(json.dumps(serve))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_cost.py"), "--serve", str(src), "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["variants"][0]["rps_per_vcpu"] == 150


@pytest.mark.slow
def test_pipeline_cost_bench_quick(tmp_path):
    """The real plan, shard (fetched from moto behind the latency proxy, at the step's own --workers), index, trainer
    and evaluate run end to end; every step of the pipeline gets a row; the output says it is a smoke run and goes
    to its own file. No timing is asserted."""
    import inspect

    from bincounter.sagemaker import processing

    out = tmp_path / "bench" / "results" / "pipeline_cost-quick.json"  # its default: never the README's file
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline_cost.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    smoke = "--quick: a smoke run of the code, not figures to quote"  # the table's title and the last line
    assert proc.stdout.strip().splitlines()[-1] == smoke and f"one pipeline execution ({smoke}):" in proc.stdout
    doc = json.loads(out.read_text())
    rates = doc["rates"]
    workers = inspect.signature(processing.shard).parameters["workers"].default  # what `process shard` runs with
    assert [s["latency_ms"] for s in rates["shard"]] == [30, 0] and all(s["workers"] == workers for s in rates["shard"])
    assert all(s[k] > 0 for s in rates["shard"] for k in ("fetch_bins_s", "fetch_cpu_ms_per_bin", "shard_bins_s"))
    assert rates["samples"]["train"] == 40 and rates["timed_steps"] >= 2 and rates["cpu_train_img_s"] > 0
    assert doc["assumptions"]["s3_first_byte_latency_ms"] == 30
    steps = [row.split("|")[1].strip() for row in doc["table"][2:]]
    assert [s.split(" ")[0] for s in steps] == ["Prepare", "Shard", "Tune", "Train", "Evaluate", "**One"]
    assert doc["table"][-1] in proc.stdout


def test_int8_bench_table_reports_holdout_and_per_seed_drops():
    """bench/int8.py's table (its runs need a demo training each: not in the tests): mean ± sd over seeds, the
    holdout columns when there is a holdout set, export's default marked, and each seed's drop from fp32 with its
    95% noise on both sets."""
    ib = _bench("int8")
    from bincounter.quantize import DEFAULT

    def cfg(acc, hacc, drop=0.0, hdrop=0.0):
        return {"accuracy": acc, "rmse": 0.7, "agreement": 0.9, "drop": drop, "drop_se": 0.02,
                "holdout_accuracy": hacc, "holdout_rmse": 0.7, "holdout_agreement": 0.95, "holdout_drop": hdrop,
                "holdout_drop_se": 0.005, "holdout_right_to_wrong": 54, "holdout_wrong_to_right": 38,
                "images_per_s": 100.0, "vs_fp32": 1.5}

    runs = [{"seed": s, "n_test": 90, "n_holdout": 990, "n_calibration": 90,
             "configs": {"fp32": cfg(0.6, 0.62), DEFAULT.name: cfg(0.6 - d, 0.62 - h, d, h)}}
            for s, d, h in ((0, 0.011, 0.016), (1, -0.022, 0.001))]
    summary = ib.summarize(runs)
    assert summary[DEFAULT.name]["holdout_accuracy"]["mean"] == pytest.approx(0.62 - 0.0085)
    text = ib.table(summary, runs)
    assert "holdout accuracy" in text and "990 holdout images" in text
    assert f"| {DEFAULT.name} (export's default) |" in text
    assert ("seed 0: test +0.011 ± 0.039; holdout +0.016 ± 0.010 (54 images right -> wrong, 38 wrong -> right)"
            in text), text
    assert "seed 1: test -0.022 ± 0.039; holdout +0.001" in text
    for run in runs:  # without a holdout set: the test split's columns only
        run["n_holdout"] = 0
        for c in run["configs"].values():
            for k in [k for k in c if k.startswith("holdout")]:
                del c[k]
    text = ib.table(ib.summarize(runs), runs)
    assert "holdout" not in text and "seed 1: test -0.022 ± 0.039" in text
    runs[0]["configs"][DEFAULT.name]["drop_se"] = 0.0  # nothing flipped: the noise is one image, never ± 0
    assert "seed 0: test +0.011 ± 0.011" in ib.table(ib.summarize(runs), runs)


def test_int8_bench_holdout_channel(tmp_path):
    """The held-out set: fresh synthetic bins of its own data seed, nearly all in test/, made once per workdir
    (an interrupted one is made again)."""
    ib = _bench("int8")
    test = ib.holdout_channel(tmp_path, 4)
    images = sorted(p.relative_to(test) for p in test.rglob("*.jpg"))
    assert len(images) >= 18 and {p.parts[0] for p in images} == {"1", "2", "3", "4", "5"}
    stamp = (tmp_path / "holdout4" / "complete").stat().st_mtime_ns
    assert ib.holdout_channel(tmp_path, 4) == test and (tmp_path / "holdout4" / "complete").stat().st_mtime_ns == stamp
    (tmp_path / "holdout4" / "complete").unlink()  # interrupted: made again from nothing
    (tmp_path / "holdout4" / "abid" / "stray.txt").write_text("left by the interrupted run")
    assert ib.holdout_channel(tmp_path, 4) == test and (tmp_path / "holdout4" / "complete").is_file()
    assert not (tmp_path / "holdout4" / "abid" / "stray.txt").exists()
    assert sorted(p.relative_to(test) for p in test.rglob("*.jpg")) == images


def test_serve_bench_keeps_the_log_lines_of_a_failure():
    """A worker's death in a 10,000-line request log is what the bench keeps, not the last 60 lines after it."""
    sb = _bench("serve")
    log = "\n".join([f"[INFO ] Backend response time: {i}" for i in range(5000)]
                    + ["[WARN ] slow", "[ERROR] Worker died.", "[INFO ] restarting"]
                    + [f"[INFO ] Backend response time: {i}" for i in range(5000)])
    kept = sb.error_lines(log)
    assert "Worker died." in kept and "[WARN ] slow" in kept and len(kept.splitlines()) == 5
    assert sb.error_lines("a\nb WARN c\nd") == "a\nb WARN c\nd"  # weaker words when no stronger one
    assert sb.error_lines("\n".join(map(str, range(100)))).splitlines() == [str(i) for i in range(40, 100)]


def test_serve_cpu_split_names_the_container_processes():
    """The command lines of the CPU image's processes (as `ps` shows them there) map to the right parts."""
    sp = _bench("serve_cpu_split")
    site = "/opt/venv/lib/python3.11/site-packages"
    assert sp.kind(f"java -Dmodel_server_home={site} -Dlog4j.configurationFile=file://{site}/bincounter/serving/"
                   "log4j2.xml -XX:+UseContainerSupport") == "MMS (JVM)"
    assert sp.kind(f"/opt/venv/bin/python3 {site}/mms/model_service_worker.py --sock-type unix --handler "
                   "bincounter.serving.handler_service") == "model worker"
    assert sp.kind("python -m bincounter.serving.server ") == "front"
    assert sp.kind(f"/opt/venv/bin/python3 /opt/venv/bin/multi-model-server --start --log-config "
                   f"{site}/bincounter/serving/log4j2.xml") == "MMS launcher"
    assert sp.kind("/usr/bin/tini -- /opt/bincounter/container/entrypoint.sh serve") == "/usr/bin/tini"

"""Profiling the trainer where SageMaker's own profiler is not available (or not wanted):

* `StepProfiler`: a torch.profiler trace of a few training steps (Chrome/Perfetto JSON) plus the top
  operators table, written to OUTPUT/profile/;
* `SystemSampler`: CPU %, process memory and (on CUDA) GPU utilisation/memory sampled every second for the
  whole run, summarised in OUTPUT/profile/system_report.json together with the input pipeline's share of
  step time (from the training loop's data-wait timing).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import torch


class StepProfiler:
    def __init__(self, out_dir: Path, steps: int, device: torch.device):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.remaining = steps + 2
        self.prof = profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
                            on_trace_ready=self._ready, record_shapes=False, profile_memory=True)
        self.prof.__enter__()
        self.done = False

    def _ready(self, prof) -> None:
        prof.export_chrome_trace(str(self.out / "trace.json"))
        sort = "self_cuda_time_total" if any(e.device_type.name == "CUDA" for e in prof.events()) else \
            "self_cpu_time_total"
        (self.out / "top_ops.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=25))

    def step(self) -> None:
        if self.done:
            return
        self.prof.step()
        self.remaining -= 1
        if self.remaining <= 0:
            self.stop()

    def stop(self) -> None:
        if not self.done:
            self.done = True
            self.prof.__exit__(None, None, None)


class SystemSampler:
    def __init__(self, interval_s: float = 1.0):
        import psutil

        self.proc = psutil.Process()
        self.psutil = psutil
        self.interval = interval_s
        self.samples: list[dict] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)

    def start(self) -> SystemSampler:
        self.psutil.cpu_percent(None)
        self.thread.start()
        return self

    def _sample(self) -> None:
        s = {"t": time.time(), "cpu_percent": self.psutil.cpu_percent(None),
             "rss_mb": self.proc.memory_info().rss / 2**20}
        if torch.cuda.is_available():
            try:
                s["gpu_util"] = torch.cuda.utilization()
            except Exception:  # noqa: BLE001 - needs pynvml; memory works without
                pass
            s["gpu_mem_mb"] = torch.cuda.memory_allocated() / 2**20
        self.samples.append(s)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._sample()

    def report(self, out_dir: Path, data_wait_s: float, step_s: float) -> dict:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self._sample()  # one at the end too: a run shorter than the interval still gets numbers

        def stats(key):
            vals = [s[key] for s in self.samples if key in s]
            return {"mean": round(sum(vals) / len(vals), 1), "max": round(max(vals), 1)} if vals else None

        total = data_wait_s + step_s
        rep = {"samples": len(self.samples), "cpu_percent": stats("cpu_percent"), "rss_mb": stats("rss_mb"),
               "gpu_util_percent": stats("gpu_util"), "gpu_mem_mb": stats("gpu_mem_mb"),
               "input_wait_fraction": round(data_wait_s / total, 3) if total else None,
               "hint": None}
        if rep["input_wait_fraction"] and rep["input_wait_fraction"] > 0.3:
            rep["hint"] = ("the input pipeline is the bottleneck: raise --workers, lower --image-size of the stored "
                           "images, or use a faster decoder")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "system_report.json").write_text(json.dumps(rep, indent=2))
        return rep

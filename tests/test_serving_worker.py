"""Issue 12, item 2: every MMS worker on its own GPU. No GPU here: torch.cuda's answers are monkeypatched and
the model loader is replaced, so what is checked is the device each step is asked to use."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import types

import pytest
import torch

from bincounter.preprocess import Preprocess


@pytest.fixture()
def inference(monkeypatch):
    """bincounter.serving.inference; sagemaker-inference (image-only) replaced by stubs when not installed."""
    try:
        importlib.import_module("sagemaker_inference.transformer")
    except ImportError:
        stubs = {"sagemaker_inference": {}, "sagemaker_inference.utils": {"retrieve_content_type_header": None},
                 "sagemaker_inference.default_inference_handler": {"DefaultInferenceHandler": object},
                 "sagemaker_inference.transformer": {"Transformer": object}}
        for name, attrs in stubs.items():
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(sys.modules["sagemaker_inference"], "utils", sys.modules["sagemaker_inference.utils"],
                            raising=False)
        monkeypatch.delitem(sys.modules, "bincounter.serving.inference", raising=False)
    return importlib.import_module("bincounter.serving.inference")


@pytest.fixture()
def four_gpus(monkeypatch):
    """torch.cuda as on a 4-GPU host; returns the indices passed to torch.cuda.set_device."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d).index
                                                                            if not isinstance(d, int) else d))
    return current


def context(gpu_id):
    props = {"model_dir": "/opt/ml/model"} | ({} if gpu_id is None else {"gpu_id": gpu_id})
    return types.SimpleNamespace(system_properties=props)


def test_worker_device_maps_mms_gpu_ids_onto_the_visible_gpus(inference, four_gpus):
    assert [inference.worker_device(context(g)) for g in (0, 1, 2, 3, 5, "2")] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:1", "cuda:2"]
    assert inference.worker_device(context(None)) == "cpu"
    assert inference.worker_device(None) == "cpu"


def test_worker_device_is_cpu_without_cuda(inference, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.worker_device(context(2)) == "cpu"


@pytest.mark.parametrize("gpu_id", [0, 2, 3])
def test_each_worker_puts_its_model_on_its_own_gpu(inference, four_gpus, monkeypatch, gpu_id, tmp_path):
    """model_fn -> Predictor(device="cuda:N") -> pick_device -> load_artifact: the model and the process's current
    device are GPU N, not GPU 0 (pick_device once dropped the index)."""
    import bincounter.evaluate as evaluate

    loaded_on = []
    (tmp_path / "model.safetensors").write_bytes(b"weights")  # what the Predictor checks weights_sha256 against
    digest = hashlib.sha256(b"weights").hexdigest()

    def fake_load(model_dir, device):
        loaded_on.append(device)
        return torch.nn.Identity(), {"model_version": "v", "arch": "a", "counts": [1, 2, 3, 4, 5],
                                     "weights_sha256": digest}, Preprocess(32)

    monkeypatch.setattr(evaluate, "load_artifact", fake_load)
    pred = inference.InferenceHandler().default_model_fn(str(tmp_path), context(gpu_id))
    assert pred.device == torch.device("cuda", gpu_id)
    assert loaded_on == [torch.device("cuda", gpu_id)]
    assert four_gpus and set(four_gpus) == {gpu_id}, four_gpus  # never switched to another GPU on the way


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_the_pytorch_worker_takes_its_threads_from_the_onnx_workers_policy(inference, monkeypatch, trained_model):
    """Issue 21: the PyTorch worker used cpu_count // workers threads, ignoring affinity and the cgroup quota (a
    forward pass took 1.2 s with 2 threads vs 22 ms with 1 on a busy 2-core host). Here the process is really
    pinned to one CPU: the ONNX worker's policy (onnx_runtime.session_threads) gives 1 thread, cpu_count // 1
    would give os.cpu_count()."""
    from bincounter.serving.onnx_runtime import session_threads

    monkeypatch.setenv("BINCOUNTER_RUNTIME", "torch")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(affinity)})
    try:
        pred = inference.InferenceHandler().default_model_fn(str(trained_model), context(None))
        assert pred.device == torch.device("cpu")
        assert torch.get_num_threads() == session_threads() == 1
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def test_the_worker_reads_each_requests_accept_header_whatever_its_case(inference):
    """#26.10: the Accept the worker passes to answer_batch (MMS hands headers over as the client spelled them)."""
    assert inference._header({"Accept": "text/csv"}, "accept") == "text/csv"
    assert inference._header({"accept": b"application/json"}, "accept") == "application/json"
    assert inference._header({"Content-Type": "image/jpeg"}, "accept") is None

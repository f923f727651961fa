"""model.int8.onnx (`bincounter export --quantize int8`): written with ONNX Runtime's quantization tools, measured
against model.onnx on a test channel, recorded in config.json, marked servable only within the accuracy limit,
and served by OnnxPredictor (the CPU image's runtime) behind the same hash gate as model.onnx."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bincounter.artifact import INT8_RECORD, ONNX, ONNX_INT8, read_config, sha256_file
from bincounter.errors import UserError

pytest.importorskip("onnxruntime")
from bincounter.serving.onnx_runtime import OnnxPredictor, served_onnx  # noqa: E402
from bincounter.serving.server import check_artifact  # noqa: E402

CAL = 8  # calibration images: enough for the tiny test model, fast


def quantize(model_dir: Path, channels: Path, *extra: str, test: bool = True) -> int:
    from bincounter.cli import main

    args = ["export", "--model-dir", str(model_dir), "--quantize", "int8", "--calibration", str(channels / "val"),
            "--calibration-images", str(CAL), *extra]
    return main(args + (["--test", str(channels / "test")] if test else []))


@pytest.fixture(scope="module")
def int8_model(trained_model, channels, tmp_path_factory) -> Path:
    """The session's tiny model with model.int8.onnx, marked servable (a limit the random-init model meets)."""
    dst = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(trained_model, dst)
    assert quantize(dst, channels, "--max-accuracy-drop", "1") == 0
    return dst


@pytest.fixture()
def int8_copy(int8_model, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(int8_model, dst)
    return dst


def set_record(model_dir: Path, **changes) -> None:
    config = read_config(model_dir)
    config[INT8_RECORD].update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_quantize_writes_the_int8_model_and_its_record(int8_model, channels):
    import onnx

    config = read_config(int8_model)
    r = config[INT8_RECORD]
    assert r["file"] == ONNX_INT8 and r["sha256"] == sha256_file(int8_model / ONNX_INT8)
    assert r["weights_sha256"] == config["weights_sha256"] == config["onnx"]["weights_sha256"]
    assert r["onnx_sha256"] == config["onnx"]["sha256"] == sha256_file(int8_model / ONNX)
    s = r["settings"]
    assert (s["quant_format"], s["activation_type"], s["weight_type"], s["reduce_range"], s["per_channel"],
            s["calibrate_method"], s["fp32_stride"], s["calibration_images"]) == (
        "QDQ", "uint8", "int8", True, True, "MinMax", 0, CAL)
    n_test = len(list((channels / "test").rglob("*.jpg")))
    t = r["test"]
    assert t["n"] == n_test and 0 <= t["changed_share"] <= 1
    assert t["accuracy_drop"] == pytest.approx(t["fp32"]["accuracy"] - t["int8"]["accuracy"], abs=1e-4)
    assert r["servable"] is True and r["forced"] is False and r["why"].startswith("servable: test accuracy")
    assert r["max_accuracy_drop"] == 1.0
    # really quantized: QDQ nodes, 8-bit weights, smaller than fp32
    graph = onnx.load(int8_model / ONNX_INT8).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    assert (int8_model / ONNX_INT8).stat().st_size < 0.5 * (int8_model / ONNX).stat().st_size


def test_fp32_figures_are_model_onnx_on_the_test_channel(int8_model, channels):
    """The recorded fp32 accuracy is what model.onnx gives on the test channel (the comparison is not made up)."""
    from bincounter.quantize import channel_arrays

    pred = OnnxPredictor(int8_model, precision="fp32")
    xs, ys = channel_arrays(channels / "test", pred.pre)
    acc = float(np.mean(pred.forward(xs).argmax(1) == ys))
    assert read_config(int8_model)[INT8_RECORD]["test"]["fp32"]["accuracy"] == pytest.approx(acc, abs=1e-4)


def test_predictor_serves_int8_when_servable_and_fp32_when_forced(int8_model, channels, monkeypatch):
    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    version = read_config(int8_model)["model_version"]
    q = OnnxPredictor(int8_model)
    assert q.model_file == ONNX_INT8 and q.why.startswith("INT8: config.json marks it servable")
    img = next((channels / "test").rglob("*.jpg")).read_bytes()
    answer = q.predict([img])[0]
    assert answer["model_version"] == f"{version}-int8"
    assert set(answer) == {"count", "expected_count", "probabilities", "model_version"}
    monkeypatch.setenv("BINCOUNTER_ONNX_PRECISION", "fp32")
    f = OnnxPredictor(int8_model)
    assert f.model_file == ONNX and "BINCOUNTER_ONNX_PRECISION=fp32" in f.why
    assert f.predict([img])[0]["model_version"] == version
    # the INT8 model is an approximation of the fp32 one, not another model
    x = np.stack([q.preprocess(img)])
    assert np.abs(q.forward(x) - f.forward(x)).max() < 0.2
    monkeypatch.setenv("BINCOUNTER_ONNX_PRECISION", "bf16")
    with pytest.raises(UserError, match="expected auto, fp32, int8"):
        OnnxPredictor(int8_model)


def test_over_the_drop_limit_is_not_servable_and_fp32_is_served(int8_copy, channels, capsys, monkeypatch):
    import bincounter.quantize

    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    real = bincounter.quantize.paired_drop  # the tiny model's INT8 may lose nothing: make it lose half its accuracy
    monkeypatch.setattr(bincounter.quantize, "paired_drop", lambda *a: {**real(*a), "accuracy_drop": 0.5})
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.01") == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert "not servable: test accuracy" in out and "drop +0.5000, limit 0.01" in out
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["servable"] is False and r["forced"] is False and r["sha256"] == sha256_file(int8_copy / ONNX_INT8)
    pred = OnnxPredictor(int8_copy)
    assert pred.model_file == ONNX and pred.why.startswith("fp32: INT8 not servable")
    assert pred.model_version == read_config(int8_copy)["model_version"]
    with pytest.raises(UserError, match="BINCOUNTER_ONNX_PRECISION=int8 but .*not servable"):
        OnnxPredictor(int8_copy, precision="int8")
    # told to: served, and the record says it was forced
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.01", "--force-servable") == 0
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["servable"] is True and r["forced"] is True and r["why"].startswith("servable (--force-servable)")
    assert OnnxPredictor(int8_copy).model_file == ONNX_INT8


def test_require_servable_exits_1_only_when_not_servable(int8_copy, channels, monkeypatch, caplog):
    import bincounter.quantize

    assert quantize(int8_copy, channels, "--max-accuracy-drop", "1", "--require-servable") == 0
    real = bincounter.quantize.paired_drop
    monkeypatch.setattr(bincounter.quantize, "paired_drop", lambda *a: {**real(*a), "accuracy_drop": 0.5})
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.01") == 0  # written, not servable, exit 0
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.01", "--require-servable") == 3
    assert "--require-servable: " in caplog.text and "is not servable" in caplog.text and "exit 3" in caplog.text
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["servable"] is False and r["sha256"] == sha256_file(int8_copy / ONNX_INT8)  # still written, recorded


def test_strict_gate_judges_the_upper_bound(int8_copy, channels, monkeypatch, capsys, caplog):
    """A measured drop under the limit is not enough with --strict-gate: the test channel must show it."""
    import bincounter.quantize

    real = bincounter.quantize.paired_drop
    fake = {"accuracy_drop": 0.0, "accuracy_drop_se": 0.1, "right_to_wrong": 3, "wrong_to_right": 3}
    monkeypatch.setattr(bincounter.quantize, "paired_drop", lambda *a: {**real(*a), **fake})
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.1") == 0
    r = read_config(int8_copy)[INT8_RECORD]
    bound = max(0.1645, 1 / r["test"]["n"])
    assert r["servable"] is True and r["gate"] == "measured" and r["drop_upper_bound"] == pytest.approx(bound)
    assert quantize(int8_copy, channels, "--max-accuracy-drop", "0.1", "--strict-gate") == 0
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["servable"] is False and r["gate"] == "strict"
    last = capsys.readouterr().out.splitlines()[-1]
    assert f"95% upper bound +{bound:.4f} (--strict-gate), limit 0.1" in last and "(a larger --test, " in last
    assert quantize(int8_copy, channels, "--max-accuracy-drop", f"{bound + 0.001:.4f}", "--strict-gate") == 0
    assert read_config(int8_copy)[INT8_RECORD]["servable"] is True
    n = r["test"]["n"]
    assert quantize(int8_copy, channels, "--max-accuracy-drop", f"{0.9 / n:.5f}", "--strict-gate") == 0
    assert f"--strict-gate: on {n} test images the drop's upper bound is at least 1/{n}" in caplog.text
    assert read_config(int8_copy)[INT8_RECORD]["servable"] is False


def test_cpu_flags_and_vnni(tmp_path):
    from bincounter.serving.onnx_runtime import cpu_flags, has_vnni

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == ["avx2", "avx512_vnni", "avx512f"] and has_vnni(info)
    info.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(info) == ["avx2"] and not has_vnni(info)
    assert cpu_flags(tmp_path / "none") == [] and not has_vnni(tmp_path / "none")  # not Linux/x86: no VNNI claimed
    info.write_text("flags\t\t: avx2 avx_vnni\n")
    assert has_vnni(info)


def test_for_cpu_vnni_is_served_only_on_a_vnni_cpu(int8_copy, channels, monkeypatch, caplog):
    """--for-cpu vnni: full 8-bit weights, recorded; a CPU without VNNI serves fp32 (its u8s8 kernels could
    saturate), and BINCOUNTER_ONNX_PRECISION=int8 refuses to start there."""
    import onnx

    import bincounter.serving.onnx_runtime as ort_mod

    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    monkeypatch.setattr(ort_mod, "has_vnni", lambda *a: False)
    assert quantize(int8_copy, channels, "--for-cpu", "vnni", "--max-accuracy-drop", "1") == 0
    assert "this CPU has no VNNI" in caplog.text  # the accuracy measured here is pessimistic: said
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["settings"]["reduce_range"] is False and r["settings"]["needs_vnni"] is True and r["servable"] is True
    assert isinstance(r["cpu_flags"], list) and r["measured_with_vnni"] is False
    weights = [i for i in onnx.load(int8_copy / ONNX_INT8).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    top = max(int(np.abs(onnx.numpy_helper.to_array(w).astype(int)).max()) for w in weights)
    assert top > 64  # 8-bit weights (reduce_range stops at 64)
    pred = OnnxPredictor(int8_copy)
    assert pred.model_file == ONNX and "quantized for CPUs with VNNI" in pred.why
    with pytest.raises(UserError, match="int8 but .*this CPU has none"):
        OnnxPredictor(int8_copy, precision="int8")
    set_record(int8_copy, settings={**r["settings"], "needs_vnni": None})  # read from the settings, not the flag
    assert OnnxPredictor(int8_copy).model_file == ONNX
    monkeypatch.setattr(ort_mod, "has_vnni", lambda *a: True)
    pred = OnnxPredictor(int8_copy)
    assert pred.model_file == ONNX_INT8 and pred.why.endswith("needs a CPU with VNNI: this one has it")
    # the default: 7-bit weights, served on any CPU
    monkeypatch.setattr(ort_mod, "has_vnni", lambda *a: False)
    assert quantize(int8_copy, channels, "--for-cpu", "any", "--max-accuracy-drop", "1") == 0
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["settings"]["reduce_range"] is True and r["settings"]["needs_vnni"] is False
    assert OnnxPredictor(int8_copy).model_file == ONNX_INT8


def test_without_a_test_channel_it_is_servable_only_when_forced(int8_copy, channels):
    assert quantize(int8_copy, channels, test=False) == 0
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["test"] is None and r["servable"] is False and "no --test channel" in r["why"]
    assert served_onnx(int8_copy, "auto")[1] == ONNX
    assert quantize(int8_copy, channels, "--force-servable", test=False) == 0
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["servable"] is True and r["forced"] is True
    assert served_onnx(int8_copy, "auto")[1] == ONNX_INT8


def test_verdict_limits():
    from bincounter.quantize import verdict

    def t(drop):
        return {"n": 10, "fp32": {"accuracy": 0.7}, "int8": {"accuracy": 0.7 - drop}, "changed_share": 0.1,
                "accuracy_drop": drop}

    assert verdict(t(0.01), 0.01, False)[0] is True  # at the limit
    assert verdict(t(0.0101), 0.01, False)[0] is False
    assert verdict(t(-0.05), 0.01, False)[0] is True  # INT8 better
    assert verdict(t(0.2), 0.01, True) == (True, verdict(t(0.2), 0.01, True)[1])
    assert verdict(None, 0.01, False)[0] is False and verdict(None, 0.01, True)[0] is True
    assert all("\n" not in verdict(x, 0.01, f)[1] for x in (t(0.2), None) for f in (False, True))
    # strict: drop + 1.645 SE, at least one image (1/n = 0.001 here)
    s = {**t(0.0), "n": 1000, "accuracy_drop_se": 0.007}  # bound 0.0115
    assert verdict(s, 0.01, False)[0] is True and verdict(s, 0.01, False, strict=True)[0] is False
    assert verdict({**s, "accuracy_drop_se": 0.006}, 0.01, False, strict=True)[0] is True  # 0.00987
    assert verdict({**s, "accuracy_drop_se": 0.0}, 0.0005, False, strict=True)[0] is False  # no flips: 1/n
    assert verdict({**s, "accuracy_drop_se": 0.0}, 0.001, False, strict=True)[0] is True
    # compared unrounded: 0.0100345 is over 0.01 although it rounds to it
    assert verdict({**s, "accuracy_drop_se": 0.0061}, 0.01, False, strict=True)[0] is False


def test_tampered_int8_model_is_refused(int8_copy, monkeypatch):
    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    data = (int8_copy / ONNX_INT8).read_bytes()
    (int8_copy / ONNX_INT8).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="model.int8.onnx: sha256 .* config.json records"):
        OnnxPredictor(int8_copy)
    problem = check_artifact(int8_copy, "onnx")
    assert "model.int8.onnx: sha256" in problem and "\n" not in problem and "BINCOUNTER_ONNX_PRECISION=fp32" in problem
    # the fp32 model is still there, and fp32 can be forced
    assert OnnxPredictor(int8_copy, precision="fp32").model_file == ONNX
    (int8_copy / ONNX_INT8).unlink()
    assert "has no model.int8.onnx" in check_artifact(int8_copy, "onnx")


def test_int8_model_of_other_weights_is_refused(int8_copy):
    set_record(int8_copy, weights_sha256="0" * 64)
    with pytest.raises(UserError, match="model.int8.onnx was quantized from other weights"):
        OnnxPredictor(int8_copy)
    assert check_artifact(int8_copy, "torch") is None  # the PyTorch runtime serves the weights, not this file


def test_check_artifact_logs_the_file_served(int8_model, caplog, monkeypatch):
    import logging

    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    with caplog.at_level(logging.INFO, logger="bincounter.serving"):
        assert check_artifact(int8_model, "onnx") is None
    assert any("model.int8.onnx (INT8: config.json marks it servable" in r.getMessage() for r in caplog.records)


def test_new_weights_drop_the_stale_int8_model(int8_copy):
    from bincounter.model import export_onnx, load_artifact, save_artifact

    model, config, pre = load_artifact(int8_copy)
    for p in model.parameters():
        p.data.add_(0.01)
    export_onnx(int8_copy, model)  # model.onnx of other weights beside the old ones: the INT8 record goes
    assert INT8_RECORD not in read_config(int8_copy) and not (int8_copy / ONNX_INT8).exists()
    (int8_copy / ONNX_INT8).write_bytes(b"left by an earlier quantization")
    save_artifact(int8_copy, model, config["arch"], config["backend"], pre)
    assert not (int8_copy / ONNX_INT8).exists()


def test_export_cli_errors_are_one_line(int8_copy, channels):
    from .conftest import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8"), "needs --calibration")
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--test", channels / "test"),
                          "--test only applies with --quantize int8")
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8", "--calibration",
                                  int8_copy / "nowhere"), "--calibration", "not a directory")
    for flag in ("--strict-gate", "--require-servable"):
        assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8", "--calibration",
                                      channels / "val", flag, "--force-servable"), flag, "contradict")
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--for-cpu", "vnni"),
                          "--for-cpu only applies with --quantize int8")
    for flag, value in (("--max-accuracy-drop", "0.05"), ("--calibration-images", "3")):
        assert_one_line_error(run_cli("export", "--model-dir", int8_copy, flag, value),
                              f"{flag} only applies with --quantize int8")


def test_calibration_from_a_sharded_channel(channels, trained_model, tmp_path):
    """--calibration and --test take sharded channels too (`open_channel`): the same images as per-image."""
    from bincounter.artifact import preprocess_of
    from bincounter.data.shards import write_shards
    from bincounter.quantize import channel_arrays

    write_shards(channels, tmp_path / "shards")
    pre = preprocess_of(read_config(trained_model))
    xs, ys = channel_arrays(tmp_path / "shards" / "test", pre)
    xi, yi = channel_arrays(channels / "test", pre)
    assert sorted(ys.tolist()) == sorted(yi.tolist()) and xs.shape == xi.shape
    key = np.round(xs.reshape(len(xs), -1).sum(1), 2)
    assert sorted(key.tolist()) == sorted(np.round(xi.reshape(len(xi), -1).sum(1), 2).tolist())
    few, _ = channel_arrays(tmp_path / "shards" / "val", pre, limit=3)
    assert len(few) == 3


def test_the_server_check_opens_the_file_served(int8_copy, monkeypatch):
    """check_artifact makes the session the workers will make, of model.int8.onnx: a file config.json vouches for
    (its sha256 recorded) that ONNX Runtime cannot load is caught before MMS starts, in one line."""
    from bincounter.artifact import write_hashed

    monkeypatch.delenv("BINCOUNTER_ONNX_PRECISION", raising=False)
    set_record(int8_copy, sha256=write_hashed(int8_copy / ONNX_INT8, b"not an onnx model"))
    problem = check_artifact(int8_copy, "onnx")
    assert problem and "\n" not in problem
    monkeypatch.setenv("BINCOUNTER_ONNX_PRECISION", "fp32")
    assert check_artifact(int8_copy, "onnx") is None


def pad_amounts(model_bytes: bytes, x: np.ndarray) -> list:
    """The amounts each Pad of the model pads by, for input x (the Pads' `pads` inputs made graph outputs)."""
    import onnx

    from bincounter.quantize import session

    m = onnx.load_from_string(model_bytes)
    pads = [n.input[1] for n in m.graph.node if n.op_type == "Pad"]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in pads)
    return [a.tolist() for a in session(m.SerializeToString()).run(pads, {"image": x})]


def test_pad_amounts_stay_exact(tmp_path):
    """TF-"same" convs (timm's tf_* models, the demo's tf_efficientnet_lite0) compute their padding at run time, in
    float, then cast it to int64. Quantized, a pad of 1 came back as 0.996 and the cast made it 0: every
    stride-2 block padded wrong. The INT8 model must pad exactly as model.onnx does."""
    import onnx
    import torch
    from timm.layers import Conv2dSame
    from torch import nn

    from bincounter.quantize import DEFAULT, pad_amount_nodes, quantize_bytes

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU6(), Conv2dSame(8, 8, 5, stride=2, groups=8),
                          nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.Softmax(1)).eval()
    fp32 = tmp_path / "same.onnx"
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["p"], dynamic_axes={"image": {0: "n"}, "p": {0: "n"}})
    assert len(pad_amount_nodes(onnx.load(str(fp32)))) > 4  # the exporter kept the run-time pad arithmetic
    cal = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    int8 = quantize_bytes(fp32, cal, dataclasses.replace(DEFAULT, fp32_stride=0))  # every conv quantized
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(int8).graph.node)  # really quantized
    want = pad_amounts(fp32.read_bytes(), cal[:2])
    assert len(want) == 2 and all(any(p) for p in want)  # two Pads, each padding something
    assert pad_amounts(int8, cal[:2]) == want
    # the same for a model whose nodes have no names (nodes_to_exclude matches by name: quantize_bytes names them)
    nameless = onnx.load(str(fp32))
    for node in nameless.graph.node:
        node.name = ""
    onnx.save(nameless, str(tmp_path / "nameless.onnx"))
    int8 = quantize_bytes(tmp_path / "nameless.onnx", cal)
    assert pad_amounts(int8, cal[:2]) == want
    assert not float_weight_convs(int8)  # and still quantized (excluding "" would have excluded every node)


def float_weight_convs(model_bytes: bytes) -> list[str]:
    """The Conv nodes of the model whose weights are float (not the output of a DequantizeLinear), in order."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in dequantized]


def test_early_convs_stay_fp32(int8_model, channels):
    """The default quantizes every conv; `--fp32-stride 4` keeps the convolutions with outputs at stride <= 4 (64 px
    images: 16 px or more; not the squeeze-excite convs, 1 px) in fp32, every other one INT8."""
    import onnx

    from bincounter.artifact import preprocess_of
    from bincounter.quantize import DEFAULT, channel_arrays, early_convs, quantize_bytes

    assert float_weight_convs((int8_model / ONNX_INT8).read_bytes()) == []
    cal, _ = channel_arrays(channels / "val", preprocess_of(read_config(int8_model)), CAL)
    stride4 = float_weight_convs(quantize_bytes(int8_model / ONNX, cal, dataclasses.replace(DEFAULT, fp32_stride=4)))
    assert stride4 == early_convs(onnx.load(int8_model / ONNX), cal[:1], 4)
    assert stride4[0] == "/model/conv_stem/Conv" and any("blocks.1" in n for n in stride4), stride4
    assert not any(n.startswith(("/model/blocks/blocks.3", "/model/conv_head")) or "conv_reduce" in n
                   for n in stride4), stride4  # stride 16, the head, squeeze-excite: INT8
    stride2 = early_convs(onnx.load(int8_model / ONNX), cal[:1], 2)
    assert stride2 and set(stride2) < set(stride4)


def test_fp32_stride_flag(int8_copy, channels):
    from .conftest import assert_one_line_error, run_cli

    assert quantize(int8_copy, channels, "--fp32-stride", "4", "--force-servable") == 0
    assert read_config(int8_copy)[INT8_RECORD]["settings"]["fp32_stride"] == 4
    assert float_weight_convs((int8_copy / ONNX_INT8).read_bytes())[0] == "/model/conv_stem/Conv"
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8", "--calibration",
                                  channels / "val", "--fp32-stride", "3"), "--fp32-stride", "power of two")
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--fp32-stride", "4"),
                          "--fp32-stride only applies with --quantize int8")


def test_paired_drop_counts_and_noise():
    from bincounter.quantize import paired_drop

    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    fp32 = labels.copy()
    fp32[:2] = 4  # fp32 right on 8 of 10
    int8 = fp32.copy()
    int8[2:5] = 0  # 3 right -> wrong
    int8[0] = 0  # 1 wrong -> right
    d = paired_drop(labels, fp32, int8)
    assert (d["accuracy_drop"], d["right_to_wrong"], d["wrong_to_right"]) == (0.2, 3, 1)
    diffs = np.array([-1, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    assert d["accuracy_drop_se"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(10), abs=1e-4)
    assert paired_drop(labels, fp32, fp32) == {"accuracy_drop": 0.0, "accuracy_drop_se": 0.0, "right_to_wrong": 0,
                                               "wrong_to_right": 0}
    three = paired_drop(np.array([0, 0, 0]), np.array([0, 0, 0]), np.array([1, 0, 0]), None)  # unrounded
    assert three["accuracy_drop"] == 1 / 3 and paired_drop(np.array([0, 0, 0]), np.array([0, 0, 0]),
                                                           np.array([1, 0, 0]))["accuracy_drop"] == 0.3333


def test_a_test_channel_too_small_for_the_limit_is_said(int8_copy, channels, caplog):
    """The drop on n test images is only known to about ±max(1/n, 1.96 standard errors); when that is wider than
    --max-accuracy-drop, chance can decide servable, and export says so (the demo's 90 images against 0.01)."""
    import logging

    n = len(list((channels / "test").rglob("*.jpg")))
    with caplog.at_level(logging.WARNING, logger="bincounter"):
        assert quantize(int8_copy, channels, "--max-accuracy-drop", str(0.5 / n)) == 0
    assert any(f"the {n} test images measure the accuracy drop" in r.getMessage() for r in caplog.records), caplog.text
    r = read_config(int8_copy)[INT8_RECORD]
    assert r["test"]["right_to_wrong"] + r["test"]["wrong_to_right"] <= round(r["test"]["changed_share"] * n)
    assert r["settings"]["calibration"] == str((channels / "val").resolve())
    assert r["test_channel"] == str((channels / "test").resolve())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bincounter"):
        assert quantize(int8_copy, channels, "--max-accuracy-drop", "1") == 0
    assert not any("measure the accuracy drop" in r.getMessage() for r in caplog.records), caplog.text


def test_a_noisy_drop_is_said_even_when_one_image_is_under_the_limit(int8_copy, channels, caplog, monkeypatch):
    """The noise term: many flips both ways make the drop uncertain beyond 1/n (monkeypatched: the tiny model's
    flips are whatever they are)."""
    import logging

    import bincounter.quantize

    n = len(list((channels / "test").rglob("*.jpg")))
    real = bincounter.quantize.paired_drop
    monkeypatch.setattr(bincounter.quantize, "paired_drop", lambda *a: {**real(*a), "accuracy_drop_se": 2 / n})
    with caplog.at_level(logging.WARNING, logger="bincounter"):
        assert quantize(int8_copy, channels, "--max-accuracy-drop", str(2 / n)) == 0  # 1/n < 2/n < 1.96 * 2/n
    assert any(f"about ±{1.96 * 2 / n:.3f}" in r.getMessage() for r in caplog.records), caplog.text


def test_export_checks_its_channels_and_limits_first(int8_copy, channels, caplog):
    import logging

    from .conftest import assert_one_line_error, run_cli

    before = sha256_file(int8_copy / ONNX_INT8)
    stamps = {f: (int8_copy / f).stat().st_mtime_ns for f in ("config.json", ONNX)}  # export_onnx rewrites both
    for bad in ("-0.5", "2", "nan", "abc"):
        assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8", "--calibration",
                                      channels / "val", "--max-accuracy-drop", bad), "--max-accuracy-drop", "[0, 1]")
    for flag in ("--calibration", "--test"):
        args = {"--calibration": channels / "val", "--test": channels / "test", flag: int8_copy / "nowhere"}
        assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8",
                                      *[x for kv in args.items() for x in kv]), flag, "not a directory")
    assert_one_line_error(run_cli("export", "--model-dir", int8_copy, "--quantize", "int8", "--calibration",
                                  channels / "val", "--fp32-stride", "1"), "--fp32-stride", "power of two")
    assert sha256_file(int8_copy / ONNX_INT8) == before  # nothing written: checked before any work
    assert {f: (int8_copy / f).stat().st_mtime_ns for f in stamps} == stamps
    with caplog.at_level(logging.WARNING, logger="bincounter"):
        assert main_export(int8_copy, channels / "test", channels / "test") == 0
    assert any("--calibration and --test are the same channel" in r.getMessage() for r in caplog.records)


def main_export(model_dir: Path, calibration: Path, test: Path) -> int:
    from bincounter.cli import main

    return main(["export", "--model-dir", str(model_dir), "--quantize", "int8", "--calibration", str(calibration),
                 "--calibration-images", str(CAL), "--test", str(test), "--max-accuracy-drop", "1"])

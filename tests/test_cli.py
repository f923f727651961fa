"""The command line: --help everywhere, one clear line for every user mistake."""

from __future__ import annotations

import pytest

from bincounter.errors import UserError

from .conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("args", [[], ["data"], ["data", "synth"], ["data", "split"], ["train"],
                                  ["evaluate"], ["predict"]])
def test_help_everywhere(args):
    proc = run_cli(*args, "--help")
    assert proc.returncode == 0 and "usage: bincounter" in proc.stdout and len(proc.stdout) > 200


def test_synth_and_split_cli(tmp_path):
    proc = run_cli("data", "synth", tmp_path / "s", "--per-class", "3", "--seed", "1", "--size", "96")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 15 synthetic bins" in proc.stderr
    proc = run_cli("data", "split", tmp_path / "s", "--out", tmp_path / "c", "--val", "0.34", "--test", "0.34")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 0 bins" in proc.stderr
    assert len(list((tmp_path / "c" / "train").rglob("*.jpg"))) == 5


def test_split_warns_about_each_count_a_split_gets_no_bins_of(tmp_path):
    """Issue 13: a tiny data set split with the default fractions wrote no val/test bins for some counts, silently."""
    assert run_cli("data", "synth", tmp_path / "s", "--per-class", "3", "--size", "64").returncode == 0
    proc = run_cli("data", "split", tmp_path / "s", "--out", tmp_path / "c")  # round(3 x 0.1) = 0 of each count
    assert proc.returncode == 0, proc.stderr
    warnings = [ln.split(" WARNING ")[1] for ln in proc.stderr.splitlines() if " WARNING " in ln]
    assert len(warnings) == 10, proc.stderr
    for split in ("val", "test"):
        for c in range(1, 6):
            assert f"{split} split: no bins of count {c} (count {c} has 3 usable bins; round(3 x 0.1) = 0: a larger " \
                f"--{split}, or more bins of count {c})" in warnings
    proc = run_cli("data", "split", tmp_path / "s", "--out", tmp_path / "c", "--val", "0", "--test", "0.34")
    assert proc.returncode == 0 and " WARNING " not in proc.stderr, proc.stderr  # no val asked for: none missing


def test_split_of_a_missing_directory(tmp_path):
    assert_one_line_error(run_cli("data", "split", tmp_path / "nope", "--out", tmp_path / "c"),
                          "not an ABID directory")


def test_split_with_a_malformed_file_list(abid_root, tmp_path):
    fl = tmp_path / "fl.json"
    fl.write_text('{"9": []}')
    assert_one_line_error(run_cli("data", "split", abid_root, "--out", tmp_path / "c", "--file-list", fl),
                          "outside the counts")


@pytest.mark.parametrize("damage, needle", [
    ("missing", "does not exist"),
    ("empty", "holds no images"),
    ("count7", "outside the counts"),
])
def test_train_with_a_bad_channel(channels_copy, tmp_path, damage, needle):
    import shutil

    train = channels_copy / "train"
    if damage == "missing":
        shutil.rmtree(train)
    elif damage == "empty":
        shutil.rmtree(train)
        train.mkdir()
    else:
        (train / "7").mkdir()
    proc = run_cli("train", "--train", train, "--val", channels_copy / "val", "--model-dir", tmp_path / "m",
                   "--no-pretrained", "--epochs", "1", "--image-size", "64")
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize("flag", ["--train", "--val"])
def test_train_on_the_channels_directory_names_its_channels(channels, tmp_path, flag):
    """`data split`'s output (train/, val/, test/) given as a channel: the line says which flags to pass."""
    chans = {"--train": channels / "train", "--val": channels / "val", flag: channels}
    proc = run_cli("train", "--train", chans["--train"], "--val", chans["--val"], "--model-dir", tmp_path / "m",
                   "--no-pretrained", "--epochs", "1", "--image-size", "64")
    assert_one_line_error(proc, f"{flag} {channels}: {channels} holds train/, val/, test/: pass --train "
                          f"{channels / 'train'} --val {channels / 'val'} (and --test {channels / 'test'})")
    assert not (tmp_path / "m").exists()


TRAIN_ARGS = ["train", "--train", "a", "--val", "b", "--model-dir", "c"]


@pytest.mark.parametrize("args, needle, cmd", [
    ([*TRAIN_ARGS, "--epochs", "x"], "argument --epochs: 'x' is not an integer", "bincounter train"),
    ([*TRAIN_ARGS, "--epochs", "0"], "argument --epochs: '0' must be >= 1", "bincounter train"),
    ([*TRAIN_ARGS, "--no-such-flag"], "unrecognized arguments: --no-such-flag", "bincounter train"),
    (["data", "split", "src", "--out", "o", "--val", "z"], "argument --val", "bincounter data split"),
    (["sm", "train", "--no-such-flag"], "the following arguments are required", "bincounter sm train"),
    (["data"], "the following arguments are required: STEP", "bincounter data"),
    (["nope"], "invalid choice: 'nope'", "bincounter"),
])
def test_usage_errors_are_one_line_with_the_help_to_read(args, needle, cmd):
    """Issue 13: argparse printed its whole usage block before the error; now a usage mistake reads like every
    other user error, one line and exit 2, and names the --help that explains the command."""
    proc = run_cli(*args)
    assert_one_line_error(proc, needle, f"(see {cmd} --help)")
    assert proc.stderr.count("\n") == 1 and "usage:" not in proc.stderr, proc.stderr


def test_help_is_still_argparse_help():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: bincounter train [-h] --train TRAIN_DIR")
    assert "--pretrained-path PRETRAINED_PATH" in proc.stdout and not proc.stderr


def test_evaluate_prints_the_expected_count_metrics(trained_model, channels, tmp_path):
    import json

    proc = run_cli("evaluate", "--model-dir", trained_model, "--data", channels / "test", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    report = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert {k: out[k] for k in ("n", "accuracy", "rmse", "per_class_recall")} == \
        {k: report[k] for k in ("n", "accuracy", "rmse", "per_class_recall")}
    exp = report["expected_count"]
    assert out["expected_count"] == {k: exp[k] for k in ("accuracy", "rmse", "rmse_unrounded", "per_class_recall")}


def test_evaluate_without_out_reports_into_the_model_dir_titled_by_the_channel(trained_model, channels, tmp_path,
                                                                              monkeypatch, caplog):
    """Issue 13: the report path is logged (the model dir when there is no --out), and the confusion matrix
    says what was evaluated (the channel's name) instead of the generic "eval set"."""
    import logging
    import shutil

    from bincounter import metrics
    from bincounter.cli import main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    titles = []
    plot = metrics.plot_confusion
    monkeypatch.setattr(metrics, "plot_confusion", lambda *a, **kw: titles.append(kw.get("title")) or plot(*a, **kw))
    with caplog.at_level(logging.INFO, logger="bincounter"):
        assert main(["evaluate", "--model-dir", str(model), "--data", str(channels / "test")]) == 0
    assert f"report: {model / 'eval_metrics.json'}, {model / 'eval_confusion_matrix.png'} (in --model-dir" \
        in caplog.text
    assert (model / "eval_confusion_matrix.png").is_file() and titles == ["test set"]


def test_train_refuses_no_pretrained_with_a_pretrained_path(tmp_path):
    proc = run_cli(*TRAIN_ARGS[:-1], tmp_path / "m", "--no-pretrained", "--pretrained-path", "w.safetensors")
    assert_one_line_error(proc, "--no-pretrained and --pretrained-path w.safetensors contradict each other")


def test_train_with_an_image_as_pretrained_path_says_so_in_one_line(channels, tmp_path):
    jpg = next((channels / "train").rglob("*.jpg"))
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir", tmp_path / "m",
                   "--arch", "tf_efficientnet_lite0", "--epochs", "1", "--image-size", "64", "--pretrained-path", jpg)
    assert_one_line_error(proc, f"pretrained weights {jpg}: a JPEG image, not a weights file")
    assert "torch" not in proc.stderr and "pickl" not in proc.stderr.lower(), proc.stderr


def test_synth_into_a_directory_with_more_bins_warns_and_eda_logs_no_matplotlib_noise(tmp_path):
    out = tmp_path / "abid"
    first = run_cli("data", "synth", out, "--per-class", "3", "--size", "64")
    assert first.returncode == 0 and "WARNING" not in first.stderr, first.stderr
    again = run_cli("data", "synth", out, "--per-class", "1", "--size", "64")
    assert again.returncode == 0, again.stderr
    warnings = [ln for ln in again.stderr.splitlines() if " WARNING " in ln]
    assert len(warnings) == 1 and f"{out} already holds 10 bins that are not part of this set of 5" in warnings[0]
    eda = run_cli("data", "eda", out, "--out", tmp_path / "eda")
    assert eda.returncode == 0, eda.stderr
    # matplotlib's INFO "Using categorical units to plot a list of strings ..." for the class histogram
    assert "categorical units" not in eda.stderr and "matplotlib" not in eda.stderr, eda.stderr


def test_predict_on_a_file_that_is_not_an_image(trained_model, tmp_path):
    f = tmp_path / "x.jpg"
    f.write_text("hello")
    assert_one_line_error(run_cli("predict", "--model-dir", trained_model, f), "cannot decode image")


# ------------------------------------------------------------------ data fetch/upload: AWS mistakes in one line
def _without_credentials(tmp_path) -> dict:
    """This environment less every AWS setting: no credentials, no config files, no instance metadata."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path / "home"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    return env


def _run_env(env, *args):
    import subprocess

    from .conftest import BIN

    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def _one_channel(tmp_path):
    img = tmp_path / "ch" / "train" / "1" / "a.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"\xff\xd8" + bytes(100))
    return tmp_path / "ch"


NOWHERE = ["--endpoint-url", "http://127.0.0.1:9"]  # nothing listens: no request may get that far


def test_data_upload_without_credentials_says_how_to_configure_them(tmp_path):
    proc = _run_env(_without_credentials(tmp_path), "data", "upload", _one_channel(tmp_path), "s3://bkt/p", *NOWHERE)
    assert_one_line_error(proc, "no AWS credentials found", "uploading needs them", "aws configure", "AWS_PROFILE")
    assert "--unsigned" not in proc.stderr
    proc = _run_env(_without_credentials(tmp_path), "data", "upload", _one_channel(tmp_path / "dry"), "s3://bkt/p",
                    "--dry-run", *NOWHERE)  # a dry run lists the prefix: without credentials, the way without AWS
    assert_one_line_error(proc, "no AWS credentials found", "--dry-run --offline needs none")


@pytest.mark.parametrize("cmd", [["upload", "CHANNELS", "s3://bkt/p"], ["fetch", "--out", "OUT", "--sample", "2"]])
def test_data_commands_with_an_unknown_profile_are_one_line(tmp_path, cmd):
    args = [_one_channel(tmp_path) if a == "CHANNELS" else tmp_path / "o" if a == "OUT" else a for a in cmd]
    proc = _run_env(_without_credentials(tmp_path), "data", *args, "--profile", "nope", *NOWHERE)
    assert_one_line_error(proc, f"data {cmd[0]} ", "The config profile (nope) could not be found")


def test_data_fetch_signed_without_credentials_names_the_way_out(tmp_path):
    proc = _run_env(_without_credentials(tmp_path), "data", "fetch", "--out", tmp_path / "o", "--sample", "2",
                    "--no-unsigned", *NOWHERE)
    assert_one_line_error(proc, "no AWS credentials found", "leave out --no-unsigned", "aws configure")


def test_data_upload_refused_per_object_is_reported_not_a_traceback(tmp_path, monkeypatch, capsys, caplog):
    """PutObject denied while listing works: each file is a failed transfer (exit 1), as with fetch."""
    from boto3.exceptions import S3UploadFailedError

    from bincounter.cli import main
    from bincounter.data import s3

    class Denied:
        def list_objects_v2(self, **kw):
            return {}

        def get_paginator(self, name):
            return type("P", (), {"paginate": lambda self, **kw: [{}]})()

        def upload_file(self, path, bucket, key, **kw):  # Config=... (transfer settings)
            raise S3UploadFailedError(f"Failed to upload {path} to {bucket}/{key}: An error occurred "
                                      "(AccessDenied) when calling the PutObject operation: Access Denied")

    monkeypatch.setattr(s3, "s3_client", lambda *a, **kw: Denied())
    rc = main(["data", "upload", str(_one_channel(tmp_path)), "s3://bkt/p"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert "p/train/1/a.jpg: Failed to upload" in caplog.text and "AccessDenied" in caplog.text


def test_data_upload_that_fails_keeps_the_objects_it_would_delete_and_says_so(tmp_path, monkeypatch, capsys,
                                                                               caplog):
    """Uploads failing on a prefix that holds objects the folder lacks: nothing is deleted, the log counts none
    as deleted (it was a TypeError: the upload handed back 0 for the objects not deleted)."""
    from boto3.exceptions import S3UploadFailedError

    from bincounter.cli import main
    from bincounter.data import s3

    class Denied:
        def list_objects_v2(self, **kw):
            return {}

        def get_paginator(self, name):
            page = {"Contents": [{"Key": "p/train/2/old.jpg", "Size": 3, "ETag": '"x"'}]}
            return type("P", (), {"paginate": lambda self, **kw: [page]})()

        def upload_file(self, path, bucket, key, **kw):
            raise S3UploadFailedError("Failed to upload: AccessDenied")

        def delete_objects(self, **kw):
            raise AssertionError("deleted although an upload failed")

    monkeypatch.setattr(s3, "s3_client", lambda *a, **kw: Denied())
    with caplog.at_level("INFO", logger="bincounter"):
        rc = main(["data", "upload", str(_one_channel(tmp_path)), "s3://bkt/p", "--force"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert "deleted 0 objects" in caplog.text and "1 could not be deleted" in caplog.text, caplog.text


@pytest.mark.parametrize("argv, quiet", [
    (["data", "synth", "out"], False),
    (["-q", "data", "synth", "out"], True),
    (["data", "synth", "out", "-q"], True),
    (["sm", "train", "--image", "i", "--role", "r", "--train", "s3://b/t", "--val", "s3://b/v", "--output",
      "s3://b/o", "-q"], True),
    (["sm", "train", "--image", "i", "--role", "r", "--train", "s3://b/t", "--val", "s3://b/v", "--output",
      "s3://b/o"], False),
])
def test_quiet_before_or_after_the_subcommand(argv, quiet):
    from bincounter.cli import build_parser

    assert build_parser().parse_args(argv).quiet is quiet


# ------------------------------------------------------------------ issue 26.8/26.9: a CLI that answers in a second
HEAVY = ("torch", "torchvision", "timm", "sagemaker", "boto3", "botocore", "matplotlib", "numpy", "PIL", "onnx",
         "aiohttp")


def _heavy_imported(code: str, env=None) -> list[str]:
    """Run `code` in a fresh interpreter and return the heavy libraries it left in sys.modules (a module set,
    not a timing: the machine's load cannot fool it)."""
    import json
    import os
    import subprocess
    import sys

    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    """--help, --version and every argument error are answered from the parser alone: building it must not
    import torch, the SageMaker SDK, boto3, matplotlib, numpy, PIL, ... (they cost seconds)."""
    assert _heavy_imported("import bincounter.cli as c\nc.build_parser()") == []


@pytest.mark.parametrize("hp", [["--hp", "arch=tf_efficientnet_lite0"], []])
def test_a_train_dry_run_imports_neither_torch_nor_timm(tmp_path, hp):
    """`sm train --dry-run` checks --hp and the model name without torch or timm: the second run answers the
    arch check from the cache of timm's model list that the first run wrote. Without --hp arch= too (the
    README's example: the trainer's default arch was read from train.py, which imports torch)."""
    role = "arn:aws:iam::123456789012:role/r"
    argv = ["sm", "train", "--role", role, "--image", "1.dkr.ecr.us-east-1.amazonaws.com/b:1", "--train",
            "s3://b/ch/train/", "--val", "s3://b/ch/val/", "--output", "s3://b/out", "--region", "us-east-1",
            *hp, "--dry-run", "-q"]
    code = ("import contextlib, io\nfrom bincounter.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    _heavy_imported(code, env)  # the first run may read timm's list (and caches it)
    assert not {"torch", "torchvision", "timm", "matplotlib"} & set(_heavy_imported(code, env))


@pytest.mark.parametrize("source", [
    ["--training-job", "bc-train-1", "--name", "bincounter", "--autoscale", "1,4"],  # the README's two deploys
    ["--training-job", "bc-train-1", "--name", "bincounter-sl", "--cpu-image", "1.dkr.ecr.us-east-1.amazonaws.com/c:1",
     "--serverless", "3072,10"],
    ["--model-package", "arn:aws:sagemaker:us-east-1:123456789012:model-package/bincounter/3", "--cpu-image",
     "--instance-type", "ml.c6i.xlarge", "--capture-s3", "s3://b/capture", "--tag", "team=vision"],
])
def test_a_deploy_dry_run_imports_no_sagemaker_sdk(source, tmp_path):
    """`sm deploy --dry-run` prints ModelBuilder's requests without importing the SDK (sagemaker.core and
    sagemaker.serve were most of its seconds), also with a telemetry-only SDK config in effect."""
    from bincounter.sm.sdk import write_offline_config

    argv = ["sm", "deploy", "--role", "arn:aws:iam::123456789012:role/r", *source, "--region", "us-east-1",
            "--dry-run", "-q"]
    code = ("import contextlib, io\nfrom bincounter.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0")
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
           "SAGEMAKER_USER_CONFIG_OVERRIDE": str(write_offline_config(tmp_path / "sdk"))}
    assert not {"sagemaker", "torch", "timm", "matplotlib", "numpy", "PIL"} & set(_heavy_imported(code, env))


@pytest.mark.parametrize("extra", [["--no-pretrained", "--pretrained-path", "x"], ["--image-size", "8"],
                                   ["--arch", "resnet5O"]])
def test_a_train_mistake_is_answered_before_torch_is_imported(extra, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    code = "from bincounter.archs import timm_models\ntimm_models()"  # the first time only: timm's list cached
    _heavy_imported(code, env)
    code = f"from bincounter.cli import main\nassert main({[*TRAIN_ARGS, *extra]!r}) == 2"
    assert not {"torch", "timm", "torchvision"} & set(_heavy_imported(code, env))


def _commands(parser, prefix=()):
    """(path, help) of every listed sub-command, depth first (the hidden `ecr` has no help and is not listed)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                path = (*prefix, choice.dest)
                yield " ".join(path), choice.help
                yield from _commands(action.choices[choice.dest], path)


def test_top_level_help_lists_every_command_with_its_description():
    """Issue 26.9: `bincounter --help` left out `data shard` and half of `sm`."""
    from bincounter.cli import build_parser

    listed = list(_commands(build_parser()))
    assert {"data shard", "sm train", "sm tune", "sm status", "sm logs", "sm pipeline", "weights fetch"} <= \
        {path for path, _ in listed}
    out = " ".join(run_cli("--help").stdout.split())
    for path, text in listed:  # one line each: the text up to its first "; "
        assert text and f"{path} {' '.join(text.split('; ')[0].split())}" in out, (path, text)


def test_every_train_flag_shows_its_default():
    import argparse
    import re

    from bincounter.train_config import add_train_arguments

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    out = run_cli("train", "--help").stdout
    entries = {e.split()[0].rstrip(","): " ".join(e.split()) for e in re.split(r"\n  (?=--)", out)[1:]}
    flags = [a for a in p._actions if a.option_strings and a.default not in (None, argparse.SUPPRESS)
             and a.dest != "help"]
    assert {"--epochs", "--weight-decay", "--seed", "--backend", "--device"} <= {a.option_strings[0] for a in flags}
    for a in flags:
        entry = entries[a.option_strings[0]]
        assert f"(default: {a.default})" in entry, entry
    assert "(default: None)" not in out, out


def test_an_unknown_arch_is_one_line_with_close_names():
    proc = run_cli(*TRAIN_ARGS, "--arch", "resnet5O")
    assert_one_line_error(proc, "--arch resnet5O", "resnet50", "efficientnet")


def test_the_arch_check_reads_timm_s_list_once_per_version(tmp_path, monkeypatch):
    """The cached list is timm's own: the check agrees with timm.is_model, and a second check reads the cache."""
    import timm

    from bincounter import archs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from timm.models import get_deprecated_models

    assert archs.timm_models() == sorted(set(timm.list_models()) | set(get_deprecated_models()))
    [cache] = (tmp_path / "bincounter").iterdir()
    assert cache.name == f"timm-{timm.__version__}-names.json"
    cache.write_text('["only_this_one"]')  # the cache is what answers now
    archs.check_arch("only_this_one")
    cache.unlink()
    for name in ("efficientnet_b0", "tf_efficientnet_lite0", "efficientnet_b0.ra_in1k", "resnet50"):
        assert timm.is_model(name)
        archs.check_arch(name)
    assert archs.close_matches("efficientnet_bo", archs.timm_models())[0] == "efficientnet_b0"
    with pytest.raises(UserError, match=r"--arch resnet5O: not a timm model name \(did you mean resnet50\?"):
        archs.check_arch("resnet5O")
    archs.check_arch("tf_efficientnet_b0_ap")  # deprecated (not in list_models) but timm still builds it


def test_the_sdk_validates_each_config_once(monkeypatch):
    """The SDK's repeated `jsonschema.validate(config, SCHEMA)` (a dozen per request, most of a dry run's CPU) runs
    once per (schema, config) pair that passed; another config, or one that fails, is still validated each time."""
    import jsonschema

    from bincounter.sm.sdk_compat import validate_config_once

    calls = []

    def spy(instance, schema, *args, **kwargs):
        calls.append(instance)
        if instance.get("bad"):
            raise jsonschema.ValidationError("bad")

    monkeypatch.setattr(jsonschema, "validate", spy)
    validate_config_once()
    validate_config_once()  # idempotent: not wrapped twice
    schema = {"type": "object"}
    for _ in range(3):
        jsonschema.validate({"a": 1}, schema)
    jsonschema.validate({"a": 2}, schema)
    for _ in range(2):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"bad": 1}, schema)
    assert calls == [{"a": 1}, {"a": 2}, {"bad": 1}, {"bad": 1}]


def test_cli_latency_bench_quick(tmp_path):
    """bench/cli_latency.py runs the real commands and checks their exit codes (its numbers are in the README)."""
    import json
    import subprocess
    import sys

    from .conftest import REPO

    out = tmp_path / "lat.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cli_latency.py"), "--runs", "1", "--only",
                           "version,error-epochs", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"version", "error-epochs"}
    assert all(r["wall_median_s"] > 0 and r["target_s"] == 1.0 for r in doc["results"].values())
    assert "version" in proc.stdout and "error-epochs" in proc.stdout


def test_no_help_entry_shows_an_empty_default_and_evaluate_explains_its_options():
    """`sm tune --help` once read "--archs ... (default: )"; `evaluate --help` had bare --model-dir and --batch-size."""
    import argparse

    from bincounter.cli import build_parser

    def parsers(p):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    yield from parsers(child)

    every = list(parsers(build_parser()))
    assert len(every) > 20
    for p in every:
        assert "(default: )" not in p.format_help(), p.prog
    [evaluate] = [p for p in every if p.prog == "bincounter evaluate"]
    assert all(a.help for a in evaluate._actions if a.option_strings), evaluate.format_help()

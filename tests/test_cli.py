"""The command line: --help everywhere, one clear line for every user mistake."""

from __future__ import annotations

import pytest

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


def test_bad_flag_values_are_argparse_errors(tmp_path):
    proc = run_cli("train", "--train", "a", "--val", "b", "--model-dir", "c", "--epochs", "zero")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--epochs" in proc.stderr


def test_predict_on_a_file_that_is_not_an_image(trained_model, tmp_path):
    f = tmp_path / "x.jpg"
    f.write_text("hello")
    assert_one_line_error(run_cli("predict", "--model-dir", trained_model, f), "cannot decode image")

"""`bincounter report MODEL_DIR`: one self-contained HTML report of a real (tiny) training run: the training
rules table, the embedded images (training curves, test confusion matrix) and the test accuracy."""

from __future__ import annotations

import base64
import json
import re
import shutil

from bincounter.report import _num

from .conftest import assert_one_line_error, run_cli


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _rules_rows(text: str) -> list[str]:
    """The rule names in the rules table (bold first cells of its rows)."""
    m = re.search(r"<th>rule</th><th>first at</th>.*?</table>", text, re.S)
    return re.findall(r"<tr><td><b>([^<]+)</b>", m.group(0)) if m else []


def test_report_of_a_real_run_embeds_images_rules_and_test_accuracy(trained_model, tmp_path):
    out = tmp_path / "r.html"
    proc = run_cli("report", trained_model, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"report": str(out)}
    text = out.read_text()
    pngs = _pngs(text)
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # curves + confusion matrix
    assert pngs[1] == (trained_model / "test_confusion_matrix.png").read_bytes()
    test = json.loads((trained_model / "test_metrics.json").read_text())
    assert f"test accuracy <b>{_num(test['accuracy'])}</b>" in text
    fired = json.loads((trained_model / "rules.json").read_text())["fired"]
    assert _rules_rows(text) == [f["rule"] for f in fired]
    if not fired:
        assert "no training rule fired" in text
    assert "<script" not in text and not re.search(r'(src|href)="https?:', text)  # self-contained


def test_rules_table_of_a_run_with_an_empty_class(channels_copy, tmp_path):
    """A run whose train channel lacks count 5 fires empty_class: its row, evidence and advice are in the table.
    The trainer's --output-dir is read first and the report lands there."""
    from bincounter.train import TrainConfig, train

    shutil.rmtree(channels_copy / "train" / "5")
    model, reports = tmp_path / "model", tmp_path / "reports"
    train(TrainConfig(train_dir=str(channels_copy / "train"), val_dir=str(channels_copy / "val"),
                      model_dir=str(model), output_dir=str(reports), epochs=1, image_size=64, pretrained=False,
                      workers=0, batch_size=16, show_progress=False))
    proc = run_cli("report", model, "--output-dir", reports)
    assert proc.returncode == 0, proc.stderr
    text = (reports / "report.html").read_text()
    rows = _rules_rows(text)
    assert "empty_class" in rows
    row = re.search(r"<b>empty_class</b>.*?</tr>", text, re.S).group(0)
    assert "train_per_count = [" in row and "no images of count 5" in row
    assert "no test metrics" in text  # no --test: said, not an error
    assert len(_pngs(text)) == 1  # the training curves


def test_missing_pieces_are_said_not_raised(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"best": {"epoch": 2, "val_acc": 0.5}, "history": [],
                                                       "world_size": 4, "config": {"arch": "efficientnet_b0"}}))
    proc = run_cli("report", tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.html").read_text()
    for said in ("no training_curves.png", "no rules.json", "no system report", "no test metrics"):
        assert said in text
    assert "efficientnet_b0" in text


def test_not_a_run_folder_is_one_line(tmp_path):
    assert_one_line_error(run_cli("report", tmp_path), "no training output here")
    assert_one_line_error(run_cli("report", tmp_path / "nope"), "no such directory")


# ------------------------------------------------------------------ #26.1: every result belongs to this run's model
def _version(model_dir) -> str:
    return json.loads((model_dir / "config.json").read_text())["model_version"]


def test_a_reused_model_dir_keeps_no_results_of_the_earlier_run(trained_model, tmp_path, channels, caplog):
    """An earlier run with --test left test_metrics.json and its PNG; a run without --test into the same folder
    removes them (and says so), so the report shows no test accuracy for a model that was never tested."""
    from bincounter.train import TrainConfig, train

    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    earlier = _version(model)
    for name in ("test_metrics.json", "rules.json", "metrics.json"):  # the earlier run stamped its results
        assert json.loads((model / name).read_text())["model_version"] == earlier, name
    (model / "eval_metrics.json").write_text(json.dumps({"accuracy": 0.2, "model_version": earlier}))
    with caplog.at_level("INFO"):
        train(TrainConfig(train_dir=str(channels / "train"), val_dir=str(channels / "val"), model_dir=str(model),
                          epochs=1, image_size=64, pretrained=False, workers=0, batch_size=16, show_progress=False,
                          seed=1))
    assert _version(model) != earlier
    for gone in ("test_metrics.json", "test_confusion_matrix.png", "eval_metrics.json", "report.html"):
        assert not (model / gone).exists(), gone
    assert re.search(rf"removed [0-9]+ result files of an earlier run from {re.escape(str(model))}", caplog.text)
    for name in ("rules.json", "metrics.json"):  # rewritten, for this run's model
        assert json.loads((model / name).read_text())["model_version"] == _version(model), name
    proc = run_cli("report", model)
    assert proc.returncode == 0, proc.stderr
    text = (model / "report.html").read_text()
    assert "test accuracy" not in text and "no test metrics" in text


def test_a_reused_output_dir_keeps_no_results_of_the_earlier_run(trained_model, tmp_path, channels):
    """The same for --output-dir: an earlier run's reports there are removed by the run, so the folder ends
    with this run's files only (no test metrics from a run that had a test channel)."""
    from bincounter.train import TrainConfig, train

    out = tmp_path / "out"
    shutil.copytree(trained_model, out)  # an earlier run's results (and model files, which are not results)
    train(TrainConfig(train_dir=str(channels / "train"), val_dir=str(channels / "val"), model_dir=str(tmp_path / "m"),
                      output_dir=str(out), epochs=1, image_size=64, pretrained=False, workers=0, batch_size=16,
                      show_progress=False, seed=1))
    for gone in ("test_metrics.json", "test_confusion_matrix.png"):
        assert not (out / gone).exists(), gone
    assert json.loads((out / "metrics.json").read_text())["model_version"] == _version(tmp_path / "m")


def test_results_of_another_model_are_refused_in_one_line(trained_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    test = json.loads((model / "test_metrics.json").read_text())
    (model / "test_metrics.json").write_text(json.dumps({**test, "accuracy": 0.2, "model_version": "0123456789ab"}))
    proc = run_cli("report", model)
    assert proc.returncode == 0, proc.stderr
    text = (model / "report.html").read_text()
    assert "test accuracy" not in text and "0123456789ab" in text
    line = [ln for ln in proc.stderr.splitlines() if "test_metrics.json" in ln]
    assert len(line) == 1 and "0123456789ab" in line[0] and _version(model) in line[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_rules_of_a_run_that_stopped_before_its_first_save_are_not_shown_with_the_earlier_model(trained_model,
                                                                                                  tmp_path):
    """A rule that fires in epoch 1 writes rules.json before the run has a model; if the run then stops, the folder
    holds the earlier run's model beside the new run's rules.json (stamped artifact.UNFINISHED): the report must not
    show those rules as the earlier model's."""
    from bincounter.artifact import UNFINISHED

    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    fired = [{"rule": "empty_class", "epoch": 1, "advice": "x"}]
    (model / "rules.json").write_text(json.dumps({"rules_fired": 1, "fired": fired, "model_version": UNFINISHED}))
    proc = run_cli("report", model)
    assert proc.returncode == 0, proc.stderr
    assert "empty_class" not in (model / "report.html").read_text()
    line = [ln for ln in proc.stderr.splitlines() if "rules.json" in ln]
    assert len(line) == 1 and "stopped before it saved a model" in line[0], proc.stderr


def test_a_stale_output_dir_does_not_hide_the_model_dir_s_own_results(trained_model, tmp_path):
    """New-user trial: with --output-dir naming an earlier run's folder, its files were refused and the model
    folder's own (current) metrics, rules and curves were not read at all."""
    model, out = tmp_path / "m", tmp_path / "out"
    shutil.copytree(trained_model, model)
    out.mkdir()
    for name in ("metrics.json", "rules.json", "test_metrics.json"):
        doc = json.loads((model / name).read_text())
        (out / name).write_text(json.dumps({**doc, "model_version": "0123456789ab"}))
    proc = run_cli("report", model, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.html").read_text()
    assert "no metrics.json" not in text and "test accuracy" in text and "data:image/png" in text, text[:2000]
    assert sum("0123456789ab" in ln for ln in proc.stderr.splitlines()) == 3, proc.stderr


def test_endpoint_metrics_name_the_model_that_answered(tmp_path, caplog):
    """sm evaluate's endpoint_metrics.json says which model answered (report.py refuses another model's results);
    answers from two models (an endpoint mid-update) are counted per model and warned about, not stamped as one."""
    import json

    from bincounter.data.split import split_dataset
    from bincounter.data.synth import synth_dataset
    from bincounter.evaluate import evaluate_remote

    raw = tmp_path / "raw"
    synth_dataset(raw, per_class=4, size=64, seed=0)
    split_dataset(raw, tmp_path / "ch", val=0.25, test=0.25, seed=0)
    test = tmp_path / "ch" / "test"
    summary, (path, _) = evaluate_remote(lambda imgs: [{"count": 1, "model_version": "abc"} for _ in imgs], test,
                                         tmp_path / "out")
    assert summary["model_version"] == "abc" and json.loads(path.read_text())["model_version"] == "abc"
    calls = iter(range(10**6))
    summary, _ = evaluate_remote(lambda imgs: [{"count": 1, "model_version": "ab"[next(calls) % 2]} for _ in imgs],
                                 test, tmp_path / "out2")
    assert "model_version" not in summary and set(summary["model_versions"]) == {"a", "b"}
    assert sum(summary["model_versions"].values()) == summary["n"]
    assert "answers came from 2 models" in caplog.text

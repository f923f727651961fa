"""Issue 21, items 5, 7, 8, 8b and 26.10: what a worker does with hostile input, through protocol.answer_batch and
a real predictor (the session's tiny trained model): only the formats the content type names are decoded, one bad
request never fails its batch-mates, one forward pass is capped, the PyTorch runtime checks its weights, and an
Accept the endpoint cannot honour is a 406."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from bincounter.errors import DataError, UserError
from bincounter.evaluate import Predictor
from bincounter.preprocess import decode
from bincounter.serving.protocol import RequestError, answer_batch, check_accept, parse_request

from .poison import bmp, dds_unimplemented, exif_poison_jpeg, jpeg, png, tiff


def batch(*images: bytes) -> tuple[bytes, str]:
    return json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode(), "application/json"


def answered(answers) -> list[tuple[int, dict]]:
    return [(status, json.loads(body)) for status, body in answers]


@pytest.fixture(scope="module")
def pred(trained_model) -> Predictor:
    return Predictor(trained_model, device="cpu")


# ---- #21.5: decode only what the content type names; any decoder exception is that request's 400 ----

def test_the_hostile_files_really_raise_what_the_issue_saw():
    """The builders make what the fault run found: PIL itself raises struct.error / NotImplementedError."""
    import io
    import struct

    from PIL import Image, ImageOps

    with pytest.raises(struct.error):
        ImageOps.exif_transpose(Image.open(io.BytesIO(exif_poison_jpeg())))
    with pytest.raises(NotImplementedError):
        Image.open(io.BytesIO(dds_unimplemented()))
    assert Image.open(io.BytesIO(tiff())).format == "TIFF"


@pytest.mark.parametrize("data, formats, needle", [
    (tiff(), ("JPEG",), "not a JPEG"),
    (png(), ("JPEG",), "not a JPEG"),
    (jpeg(), ("PNG",), "not a PNG"),
    (bmp(), ("JPEG", "PNG"), "not a JPEG or PNG"),
    (dds_unimplemented(), ("JPEG", "PNG"), "not a JPEG or PNG"),
])
def test_decode_opens_only_the_formats_it_is_given(data, formats, needle):
    with pytest.raises(DataError, match=needle):
        decode(data, 32, formats=formats)


@pytest.mark.parametrize("data, needle", [(exif_poison_jpeg(), "corrupt header or metadata"),
                                          (dds_unimplemented(), "NotImplementedError: Unimplemented pixel format")],
                         ids=["exif-struct-error", "dds"])
def test_any_decoder_exception_is_a_data_error(data, needle):
    """struct.error from exif_transpose, NotImplementedError from the DDS plugin: a DataError (one line)."""
    with pytest.raises(DataError, match="cannot decode image: .*" + needle) as e:
        decode(data, 32)  # any format, as for training data: still no other exception
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("request_, status", [
    ((tiff(), "image/jpeg"), 400),
    ((png(), "image/jpeg"), 400),
    ((jpeg(), "image/png"), 400),
    ((bmp(), "application/x-image"), 400),
    ((exif_poison_jpeg(), "image/jpeg"), 400),
    (batch(jpeg(), dds_unimplemented()), 400),
    ((jpeg(), "image/jpeg"), 200),
    ((png(), "image/png"), 200),
    ((png(), "application/x-image"), 200),
    (batch(jpeg(), png()), 200),
])
def test_the_content_type_names_the_formats_a_request_may_hold(pred, request_, status):
    [(got, doc)] = answered(answer_batch(pred, [request_]))
    assert got == status, doc
    if status != 200:
        assert doc["status"] == status and "\n" not in doc["error"] and "object at" not in doc["error"]


def test_poison_requests_leave_their_batch_mates_200(pred):
    """The fault run: a TIFF as image/jpeg (TypeError), a corrupt EXIF orientation (struct.error) or a DDS
    (NotImplementedError) in one MMS batch answered 500 to every request of it."""
    good = [(jpeg(color=(10, 200, 30)), "image/jpeg"), batch(jpeg(), png(color=(200, 10, 10))),
            (png((64, 64), (0, 0, 255)), "image/png")]
    poison = [(exif_poison_jpeg(), "image/jpeg"), (tiff(), "image/jpeg"), batch(jpeg(), dds_unimplemented()),
              (b"\x00" * 200, "image/png")]
    mixed = [good[0], poison[0], good[1], poison[1], poison[2], good[2], poison[3]]
    answers = answered(answer_batch(pred, mixed))
    assert [s for s, _ in answers] == [200, 400, 200, 400, 400, 200, 400], answers
    assert "instance 1:" in answers[4][1]["error"]
    alone = answered(answer_batch(pred, good))
    assert [answers[i] for i in (0, 2, 5)] == alone  # the same answers as without the poison


class FailingForward(Predictor):
    """The real predictor, with a forward pass that fails like a CUDA OOM over more than `limit` images, or
    whenever one given image is in the batch (a poison input that decodes but breaks the model)."""

    def __init__(self, model_dir, limit=10**9, poison: np.ndarray | None = None):
        super().__init__(model_dir, device="cpu")
        self.limit, self.poison, self.calls = limit, poison, []

    def forward(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.poison is not None and any(np.array_equal(x, self.poison) for x in batch):
            raise RuntimeError("an op the model cannot run on this input")
        return super().forward(batch)


def test_a_failed_shared_forward_pass_is_retried_per_request(trained_model, pred, caplog):
    requests = [(jpeg(color=(10, 200, 30)), "image/jpeg"), batch(jpeg(), png()), (png(), "image/png")]
    model = FailingForward(trained_model, limit=2)
    with caplog.at_level(logging.WARNING, "bincounter.serving"):
        answers = answer_batch(model, requests)
    assert answers == answer_batch(pred, requests) and [s for s, _ in answers] == [200] * 3
    assert model.calls == [4, 1, 2, 1]
    assert "one by one" in caplog.text


def test_a_request_that_breaks_the_forward_pass_gets_the_only_500(trained_model, pred, caplog):
    poison_png = png(color=(1, 2, 3))
    model = FailingForward(trained_model, poison=pred.preprocess(poison_png))
    requests = [(jpeg(), "image/jpeg"), batch(png(), poison_png), (png((64, 64)), "image/png")]
    with caplog.at_level(logging.ERROR, "bincounter.serving"):
        answers = answered(answer_batch(model, requests))
    assert [s for s, _ in answers] == [200, 500, 200]
    assert answers[1][1] == {"error": "internal error during inference (see the endpoint log)", "status": 500}
    assert caplog.text.count("Traceback") == 1 and "cannot run on this input" in caplog.text


def test_an_unexpected_error_preparing_one_request_answers_only_that_one(trained_model, caplog):
    class BuggyPreprocess(Predictor):
        def preprocess(self, data, formats=None):
            if data.startswith(b"\x89PNG"):
                raise KeyError("a bug in our own code")
            return super().preprocess(data, formats)

    model = BuggyPreprocess(trained_model, device="cpu")
    with caplog.at_level(logging.ERROR, "bincounter.serving"):
        answers = answered(answer_batch(model, [(jpeg(), "image/jpeg"), (png(), "image/png"),
                                                (jpeg(), "image/jpeg")]))
    assert [s for s, _ in answers] == [200, 500, 200]
    assert answers[1][1]["status"] == 500 and "\n" not in answers[1][1]["error"]
    assert caplog.text.count("Traceback") == 1 and "a bug in our own code" in caplog.text


def test_a_transparent_png_is_served_as_the_background_like_in_training(pred):
    """Issue 21, item 6, through the serving path: a fully transparent red PNG is answered like a PNG of the
    background colour (the one preprocessing definition composites it, for training too: test_data.py)."""
    from bincounter.preprocess import BACKGROUND

    from .poison import transparent

    assert np.array_equal(pred.preprocess(transparent("RGBA")), pred.preprocess(png(color=BACKGROUND)))
    [a, b] = answer_batch(pred, [(transparent("RGBA"), "image/png"), (png(color=BACKGROUND), "image/png")])
    assert a == b and a[0] == 200


# ---- #21.8b: a deeply nested JSON body ----

def test_a_json_body_nested_200000_deep_is_a_400_not_a_recursion_error(pred):
    body = b"[" * 200_000 + b"]" * 200_000  # 400 KB
    with pytest.raises(RequestError) as e:
        parse_request(body, "application/json")
    assert e.value.status == 400 and "nested" in e.value.message
    [(status, doc)] = answered(answer_batch(pred, [(body, "application/json"), (jpeg(), "image/jpeg")])[:1])
    assert status == 400 and doc["status"] == 400


# ---- #26.10: Accept ----

@pytest.mark.parametrize("accept", [None, "", "*/*", "application/*", "application/json",
                                    "Application/JSON; charset=utf-8", "text/csv, application/json;q=0.5",
                                    "text/html,application/xhtml+xml,*/*;q=0.8"])
def test_an_accept_that_allows_json_passes(accept):
    check_accept(accept)


@pytest.mark.parametrize("accept", ["text/csv", "text/*", "application/xml", "application/json;q=0",
                                    "image/png, text/csv;q=0.9", "*/*;q=0"])
def test_an_accept_that_excludes_json_is_406(pred, accept):
    with pytest.raises(RequestError) as e:
        check_accept(accept)
    assert e.value.status == 406 and "application/json" in e.value.message
    [(status, doc)] = answered(answer_batch(pred, [(jpeg(), "image/jpeg", accept)]))
    assert status == 406 and doc == {"error": e.value.message, "status": 406}


def test_answer_batch_checks_each_requests_own_accept(pred):
    answers = answer_batch(pred, [(jpeg(), "image/jpeg", "text/csv"), (jpeg(), "image/jpeg", "*/*"),
                                  (jpeg(), "image/jpeg")])
    assert [s for s, _ in answers] == [406, 200, 200]


# ---- #21.7: one forward pass is capped ----

def _noise(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)


def test_a_100_image_forward_runs_in_chunks_with_the_same_answers(trained_model, monkeypatch):
    """The chunks are seen by the network itself (a forward hook on the real model)."""
    monkeypatch.setenv("BINCOUNTER_MAX_FORWARD_BATCH", "32")
    chunked = Predictor(trained_model, device="cpu")
    monkeypatch.setenv("BINCOUNTER_MAX_FORWARD_BATCH", "1000")
    whole = Predictor(trained_model, device="cpu")
    seen = {id(chunked): [], id(whole): []}
    for p in (chunked, whole):
        p.model.register_forward_hook(lambda m, args, out, key=id(p): seen[key].append(len(args[0])))
    x = _noise(100, chunked.pre.image_size)
    a, b = chunked.forward(x), whole.forward(x)
    assert seen[id(chunked)] == [32, 32, 32, 4] and seen[id(whole)] == [100]
    assert a.shape == (100, 5) and np.allclose(a, b, atol=1e-5)
    assert [r["count"] for r in chunked.format(a)] == [r["count"] for r in whole.format(b)]


def test_the_onnx_runtime_chunks_too(trained_model, monkeypatch):
    pytest.importorskip("onnxruntime")
    from bincounter.serving.onnx_runtime import OnnxPredictor

    class Recorder:
        def __init__(self, session):
            self.session, self.sizes = session, []

        def run(self, names, feeds):
            self.sizes.append(len(next(iter(feeds.values()))))
            return self.session.run(names, feeds)

    monkeypatch.setenv("BINCOUNTER_MAX_FORWARD_BATCH", "32")
    chunked = OnnxPredictor(trained_model)
    chunked.session = rec = Recorder(chunked.session)
    whole = OnnxPredictor(trained_model, max_forward_batch=1000)
    x = _noise(100, chunked.pre.image_size)
    a, b = chunked.forward(x), whole.forward(x)
    assert rec.sizes == [32, 32, 32, 4]
    assert a.shape == (100, 5) and np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_a_bad_forward_batch_setting_is_one_clear_error(trained_model, monkeypatch, value):
    monkeypatch.setenv("BINCOUNTER_MAX_FORWARD_BATCH", value)
    with pytest.raises(UserError, match="BINCOUNTER_MAX_FORWARD_BATCH"):
        Predictor(trained_model, device="cpu")


# ---- #21.8: the PyTorch runtime checks weights_sha256 ----

def test_a_swapped_weights_file_is_refused_by_the_pytorch_runtime(trained_model, tmp_path):
    from bincounter.artifact import check_weights
    from bincounter.model import load_artifact, save_artifact

    model_copy = tmp_path / "model"
    shutil.copytree(trained_model, model_copy)
    model, config, pre = load_artifact(trained_model)
    for p in model.parameters():
        p.data.add_(0.01)
    save_artifact(tmp_path / "other", model, config["arch"], config["backend"], pre)
    shutil.copy(tmp_path / "other" / "model.safetensors", model_copy / "model.safetensors")
    with pytest.raises(UserError, match="weights_sha256") as e:
        Predictor(model_copy, device="cpu")
    assert "\n" not in str(e.value) and config["model_version"] in str(e.value)
    with pytest.raises(UserError, match="weights_sha256"):
        check_weights(model_copy)
    assert check_weights(trained_model)["model_version"] == config["model_version"]
    shutil.copy(Path(trained_model) / "model.safetensors", model_copy / "model.safetensors")
    Predictor(model_copy, device="cpu")  # the right file again: served

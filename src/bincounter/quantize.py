"""INT8 for the CPU image: model.onnx quantized with ONNX Runtime's own tools, measured, and marked servable only
when it holds the accuracy.

`quantize_int8` (what `bincounter export --quantize int8` runs): `quant_pre_process` (shape inference + graph
optimisation, as ONNX Runtime recommends before quantizing), then `quantize_static`: QDQ format, per-channel
weights, MinMax ranges calibrated on N images of a val channel preprocessed by THE `Preprocess` (config.json's).
The nodes that compute a Pad's amounts are kept in float (`pad_amount_nodes`): TF-"same" models (timm's tf_*,
the demo's tf_efficientnet_lite0) compute their padding at run time from the input's shape, in float, then cast
it to int64; quantized, a pad of 1 came back as 0.996 and the cast made it 0, so every stride-2 block padded
wrong and a quarter to a third of the counts changed (bench/int8.py, docs/PERFORMANCE.md#int8).
`export --fp32-stride 4` also keeps the convolutions up to output stride 4 (the stem and the first blocks, at the
two highest resolutions) in fp32 (`early_convs`): half as many counts change, but INT8 loses its speed (1.45x ->
1.26x fp32 on the demo model, 1.13x -> 0.80x on efficientnet_b0 at 224 px) and the accuracy drop is no smaller on
average, so the default quantizes them all (docs/PERFORMANCE.md#int8).
The types are `DEFAULT` = uint8 activations, int8 weights with `reduce_range` (7-bit weights): on CPUs without
VNNI (AVX2 only, like this project's machines) ONNX Runtime's u8s8 kernels can saturate the 16-bit intermediate
sums and its docs recommend reduce_range there; ONNX Runtime 1.32's default (int8 activations) ran no faster
than fp32 here (bench/int8.py, docs/PERFORMANCE.md). With a test channel both models are evaluated on it
(accuracy, count RMSE, the share of images whose count changed) and the INT8 model is marked servable only when
its accuracy is at most `max_drop` below fp32's (`strict`: the drop's 95% upper bound, not the drop measured);
without one, only when forced. The record goes to config.json
(`artifact.INT8_RECORD`) with the sha256 of the bytes written and of the weights and model.onnx it came from;
the CPU image checks them like model.onnx's (serving/onnx_runtime.py).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np

from .artifact import INT8_RECORD, ONNX, ONNX_INT8, preprocess_of, read_config, sha256_file, write_config, write_hashed
from .errors import UserError

log = logging.getLogger("bincounter")

#: images per calibration / evaluation pass (MinMax ranges do not depend on how the images are batched)
PASS = 16


@dataclasses.dataclass(frozen=True)
class QuantSettings:
    activation_type: str = "uint8"  # uint8 | int8
    weight_type: str = "int8"
    reduce_range: bool = True  # 7-bit weights: no u8s8 saturation on AVX2 without VNNI
    per_channel: bool = True
    quant_format: str = "QDQ"
    calibrate_method: str = "MinMax"
    fp32_stride: int = 0  # convs whose output is at most this much smaller than the image stay fp32 (0: none)

    @property
    def needs_vnni(self) -> bool:
        """uint8 x int8 with full 8-bit weights: exact on CPUs with VNNI, can saturate on those without (the rule
        the CPU image applies to a record: `serving.onnx_runtime.needs_vnni`)."""
        from .serving.onnx_runtime import needs_vnni

        return needs_vnni(dataclasses.asdict(self))

    @property
    def name(self) -> str:
        short = {"uint8": "U8", "int8": "S8"}
        return (short[self.activation_type] + short[self.weight_type] + (" reduce_range" if self.reduce_range else "")
                + (f", fp32 to stride {self.fp32_stride}" if self.fp32_stride else ""))


#: what `export --quantize int8` writes: exact on every x86 CPU
DEFAULT = QuantSettings()
#: `export --quantize int8 --for-cpu vnni`: 8-bit weights, for CPUs with VNNI only (the CPU image serves fp32 on
#: others); on this project's VNNI VM it agreed with fp32 more often at the same speed (docs/PERFORMANCE.md#vnni)
VNNI = dataclasses.replace(DEFAULT, reduce_range=False)
#: the configurations bench/int8.py compares (fp32 is the reference)
CONFIGS = {c.name: c for c in (QuantSettings("int8", "int8", False), QuantSettings("int8", "int8", True),
                                VNNI, DEFAULT,
                                dataclasses.replace(DEFAULT, fp32_stride=4))}


def pad_amount_nodes(model) -> list[str]:
    """Names of the nodes of `model` (an onnx ModelProto) that compute a Pad's amounts: its non-data inputs and
    their ancestors, up to the Shape nodes that read the data's shape. Shape arithmetic, not activations: it must
    stay exact, so quantization leaves these nodes alone."""
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    found: set[int] = set()
    todo = [t for node in model.graph.node if node.op_type == "Pad" for t in node.input[1:] if t]
    while todo:
        i = producer.get(todo.pop())  # None: an initializer or a graph input
        if i is None or i in found:
            continue
        found.add(i)
        node = model.graph.node[i]
        if node.op_type != "Shape":  # a Shape reads the data tensor: the walk stops there
            todo += [t for t in node.input if t]
    return sorted(model.graph.node[i].name for i in found)  # (quantize_bytes names every node uniquely first)


def early_convs(model, image: np.ndarray, max_stride: int) -> list[str]:
    """Names of the Conv nodes of `model` (an onnx ModelProto) whose output is at most `max_stride` times smaller
    than the input image: the first, highest-resolution layers, with the fewest channels, where INT8 error starts
    and then grows through the network (bench/int8.py: keeping those of stride <= 4 in fp32 halved the counts
    that changed, for much of INT8's speed: `export --fp32-stride`, off by default). Sizes from running `model`
    on `image` (1 x 3 x S x S): a TF-"same" model's Pads hide them from shape inference."""
    import onnx

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if max_stride <= 0 or not convs:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n.output[0]) for n in convs if n.output[0] not in outputs)
    sess = session(probe.SerializeToString(), threads=1)
    outs = sess.run([n.output[0] for n in convs], {sess.get_inputs()[0].name: image})
    h, w = image.shape[2:]
    return [n.name for n, out in zip(convs, outs, strict=True) if out.ndim == 4 and min(out.shape[2:]) > 0
            and round(h / out.shape[2]) <= max_stride and round(w / out.shape[3]) <= max_stride]


def quantize_bytes(fp32: str | Path, calibration: np.ndarray, settings: QuantSettings = DEFAULT) -> bytes:
    """The INT8 model's bytes: `fp32` (an ONNX file) pre-processed and statically quantized, ranges calibrated
    on `calibration` (N x 3 x S x S float32, preprocessed as the model expects), Pad amounts left in float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    name = session(fp32).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + PASS] for i in range(0, len(calibration), PASS))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: np.ascontiguousarray(batch, dtype=np.float32)}

    quiet = _QuietQuantizer()  # its INFO lines go to the root logger: one per widened weight scale (~70 here)
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="bincounter-int8-") as tmp:
            pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            model = onnx.load(str(pre))
            seen: set[str] = set()  # nodes_to_exclude matches by name: every node gets its own
            renamed = 0
            taken = {n.name for n in model.graph.node}
            for i, node in enumerate(model.graph.node):
                if not node.name or node.name in seen:
                    node.name, renamed = next(f"bincounter_node_{i}_{k}" for k in range(len(taken) + 1)
                                              if f"bincounter_node_{i}_{k}" not in taken), renamed + 1
                    taken.add(node.name)
                seen.add(node.name)
            if renamed:
                onnx.save(model, str(pre))
            exclude = pad_amount_nodes(model)
            if exclude:
                log.info("keeping %d nodes in float: they compute Pad amounts", len(exclude))
            early = early_convs(model, np.ascontiguousarray(calibration[:1], dtype=np.float32), settings.fp32_stride)
            if early:
                log.info("keeping the %d convolutions up to output stride %d in fp32 (--fp32-stride)",
                         len(early), settings.fp32_stride)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat[settings.quant_format],
                            per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                            activation_type=types[settings.activation_type], weight_type=types[settings.weight_type],
                            calibrate_method=CalibrationMethod[settings.calibrate_method],
                            nodes_to_exclude=exclude + early)
            data = out.read_bytes()
    finally:
        root.removeFilter(quiet)
    if quiet.dropped:
        log.info("ONNX Runtime's quantizer: %d info lines not shown (e.g. %s)", quiet.dropped, quiet.first)
    return data


class _QuietQuantizer(logging.Filter):
    """Drops (and counts) the quantizer's INFO lines on the root logger; warnings still pass."""

    def __init__(self):
        super().__init__()
        self.dropped, self.first = 0, ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and "onnxruntime" in record.pathname:
            self.dropped += 1
            msg = record.getMessage()
            self.first = self.first or (msg if len(msg) <= 100 else msg[:100] + "...")
            return False
        return True


def session(model: str | Path | bytes, threads: int = 0):
    """An ONNX Runtime CPU session of a file or of model bytes (threads 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def probabilities(sess, xs: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xs[i:i + PASS]})[0] for i in range(0, len(xs), PASS)])


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, counts) -> dict:
    """accuracy and count RMSE of `probs` (argmax) against `labels`, and the share of images whose count differs
    from `reference`'s."""
    from .metrics import confusion_matrix, summarize

    pred = probs.argmax(1)
    s = summarize(confusion_matrix(labels, pred, len(counts)), counts=counts)
    return {"accuracy": round(s["accuracy"], 4), "rmse": round(s["rmse"], 4),
            "changed_share": round(float(np.mean(pred != reference.argmax(1))), 4)}


def channel_arrays(root: str | Path, pre, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x S x S float32, class indices) of a channel, per-image or sharded (`open_channel`),
    preprocessed by `pre`; unreadable images left out. With `limit`: that many, a seeded sample of a per-image
    channel (its files are sorted by count), the first ones of a sharded channel (written shuffled)."""
    from .data.shards import ShardDataset, open_channel
    from .errors import DataError

    try:
        ds = open_channel(root, pre)
    except DataError as e:
        raise UserError(str(e)) from None
    xs, ys = [], []
    if isinstance(ds, ShardDataset):
        for x, y, ok in ds.loader(PASS, 0, 1, 0, shuffle=False):
            keep = ok.numpy().astype(bool)
            xs += list(x.numpy()[keep])
            ys += y.numpy()[keep].tolist()
            if limit is not None and len(xs) >= limit:
                break
    else:
        order = range(len(ds)) if limit is None else sorted(np.random.default_rng(seed).permutation(len(ds))[:limit])
        for i in order:
            x, y, ok = ds[int(i)]
            if ok:
                xs.append(x.numpy())
                ys.append(y)
    if not xs:
        raise UserError(f"channel {root}: no readable images")
    xs = xs[:limit] if limit is not None else xs
    return np.stack(xs).astype(np.float32), np.asarray(ys[:len(xs)], dtype=np.int64)


def quantize_int8(model_dir: str | Path, calibration: str | Path, test: str | Path | None = None,
                  calibration_images: int = 100, max_drop: float = 0.01, force_servable: bool = False,
                  settings: QuantSettings = DEFAULT, strict: bool = False) -> dict:
    """Write model.int8.onnx beside model.onnx (which must be the export of this directory's weights), evaluate
    both on `test` when given, record it all in config.json -> the record (config.json's INT8_RECORD)."""
    import onnxruntime

    from .serving.onnx_runtime import check_onnx, cpu_flags, has_vnni

    model_dir = Path(model_dir)
    config = check_onnx(model_dir)  # quantize the export of these weights, nothing else
    vnni = has_vnni()
    if calibration_images < 1:
        raise UserError(f"--calibration-images {calibration_images}: expected at least 1")
    pre = preprocess_of(config)
    counts = tuple(config["counts"])
    cal, _ = channel_arrays(calibration, pre, calibration_images)
    if len(cal) < calibration_images:
        log.info("calibrating on %d images: all that %s holds (--calibration-images %d)", len(cal), calibration,
                 calibration_images)
    if test is not None and Path(test).resolve() == Path(calibration).resolve():
        log.warning("--calibration and --test are the same channel: the INT8 model is judged on the images that "
                    "set its ranges")
    log.info("quantizing %s (%s, %s, per-channel=%s) calibrated on %d images of %s", model_dir / ONNX,
             settings.quant_format, settings.name, settings.per_channel, len(cal), calibration)
    data = quantize_bytes(model_dir / ONNX, cal, settings)

    result = None
    if test is not None:
        xs, ys = channel_arrays(test, pre)
        fp32 = probabilities(session(model_dir / ONNX), xs)
        int8 = probabilities(session(data), xs)
        a, b = compare(fp32, fp32, ys, counts), compare(fp32, int8, ys, counts)
        result = {"n": len(ys), "fp32": {k: a[k] for k in ("accuracy", "rmse")},
                  "int8": {k: b[k] for k in ("accuracy", "rmse")}, "changed_share": b["changed_share"],
                  **paired_drop(ys, fp32.argmax(1), int8.argmax(1), None)}  # unrounded: the gate compares these
        if settings.needs_vnni and not vnni:
            log.warning("this CPU has no VNNI: the test accuracy of an INT8 model for VNNI CPUs (--for-cpu vnni) "
                        "is measured here with kernels that can saturate, which VNNI CPUs do not; measure it on "
                        "the CPU you will serve on (the record says measured_with_vnni: false)")
        resolution = max(1 / len(ys), 1.96 * result["accuracy_drop_se"])
        if strict and 1 / len(ys) > max_drop:
            log.warning("--strict-gate: on %d test images the drop's upper bound is at least 1/%d = %.4f, over "
                        "--max-accuracy-drop %g: INT8 cannot be servable; a larger --test channel can show it",
                        len(ys), len(ys), 1 / len(ys), max_drop)
        elif strict and max_drop < resolution:
            log.warning("--strict-gate: the %d test images measure the accuracy drop to about ±%.3f (95%%), wider "
                        "than --max-accuracy-drop %g: INT8 is servable only if it loses nothing measurable; a "
                        "larger --test channel can show a small drop is within the limit", len(ys), resolution,
                        max_drop)
        elif max_drop < resolution:
            log.warning("the %d test images measure the accuracy drop to about ±%.3f (95%%; %d images went from "
                        "right to wrong, %d from wrong to right), wider than --max-accuracy-drop %g: chance can "
                        "decide servable; a larger --test channel measures it better", len(ys), resolution,
                        result["right_to_wrong"], result["wrong_to_right"], max_drop)
    servable, why = verdict(result, max_drop, force_servable, strict)
    bound = None if result is None else round(drop_upper_bound(result), 4)
    if result is not None:
        result |= {k: round(result[k], 4) for k in ("accuracy_drop", "accuracy_drop_se")}
    try:
        digest = write_hashed(model_dir / ONNX_INT8, data)
    except OSError as e:
        raise UserError(f"cannot write {model_dir / ONNX_INT8}: {e.strerror or e}") from None
    record = {"file": ONNX_INT8, "sha256": digest, "weights_sha256": config["onnx"]["weights_sha256"],
              "onnx_sha256": sha256_file(model_dir / ONNX),
              "settings": {**dataclasses.asdict(settings), "needs_vnni": settings.needs_vnni,
                           "calibration_images": len(cal),
                           "calibration": str(Path(calibration).resolve()), "onnxruntime": onnxruntime.__version__},
              "test_channel": None if test is None else str(Path(test).resolve()), "cpu_flags": cpu_flags(),
              "test": result, "max_accuracy_drop": max_drop, "gate": "strict" if strict else "measured",
              "drop_upper_bound": bound, "measured_with_vnni": None if result is None else vnni,
              "forced": bool(force_servable and servable),
              "servable": servable, "why": why}
    config = read_config(model_dir)
    config[INT8_RECORD] = record
    write_config(model_dir, config)
    return record


def paired_drop(labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray, digits: int | None = 4) -> dict:
    """fp32's accuracy minus INT8's on the same images (class indices), with the images that went right -> wrong
    and wrong -> right and the standard error of the paired difference (what the drop's noise is); rounded to
    `digits` (None: exact, what a gate must compare)."""
    d = (fp32 == labels).astype(np.float64) - (int8 == labels)
    se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    drop = float(d.mean())
    return {"accuracy_drop": drop if digits is None else round(drop, digits),
            "accuracy_drop_se": se if digits is None else round(se, digits),
            "right_to_wrong": int((d > 0).sum()), "wrong_to_right": int((d < 0).sum())}


def drop_upper_bound(test: dict) -> float:
    """The accuracy drop's one-sided 95% upper bound: drop + 1.645 standard errors of the paired difference, at
    least one image (no flips among n images does not prove a drop of 0). Unrounded."""
    return test["accuracy_drop"] + max(1.645 * test["accuracy_drop_se"], 1 / test["n"])


def verdict(test: dict | None, max_drop: float, force: bool, strict: bool = False) -> tuple[bool, str]:
    """(servable, one line why) from the test comparison (None: no test channel). `strict`: the drop's 95% upper
    bound (`drop_upper_bound`), not the measured drop, must be within `max_drop`."""
    if test is None:
        if force:
            return True, "servable (--force-servable): not evaluated, no --test channel"
        return False, "not servable: no --test channel to measure its accuracy (give --test DIR, or --force-servable)"
    drop = drop_upper_bound(test) if strict else test["accuracy_drop"]
    line = (f"test accuracy {test['int8']['accuracy']:.4f} vs fp32 {test['fp32']['accuracy']:.4f} "
            f"(drop {test['accuracy_drop']:+.4f}"
            + (f", 95% upper bound {drop:+.4f} (--strict-gate)" if strict else "")
            + f", limit {max_drop:g}; {test['changed_share']:.1%} of {test['n']} counts changed)")
    if drop <= max_drop:
        return True, f"servable: {line}"
    if force:
        return True, f"servable (--force-servable): {line}"
    hint = "a larger --test, --max-accuracy-drop" if strict else "--max-accuracy-drop"
    return False, f"not servable: {line} ({hint}, or --force-servable)"

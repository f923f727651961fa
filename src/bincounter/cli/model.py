"""`bincounter train | evaluate | export | predict | report`: a model on this machine, from training it to
reporting on its run, each a thin wrapper over the library (`train`, `evaluate`, `model`, `report`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..artifact import ONNX_OPSET, ONNX_OPSETS
from ..errors import UserError
from ..train_config import add_train_arguments, config_from_args, positive_int
from .base import Formatter, fraction

log = logging.getLogger("bincounter")


def cmd_train(args) -> int:
    from ..archs import check_arch

    cfg = config_from_args(args)
    cfg.validate()  # these and the model name before torch is imported: a mistake is answered at once
    check_arch(cfg.arch, cfg.backend)
    from ..train import train

    result = train(cfg)
    if result.get("best"):
        b = result["best"]
        log.info("best epoch %d: val_acc %.4f, val_rmse %.4f; model in %s", b["epoch"], b["val_acc"],
                 b["val_rmse"], cfg.model_dir)
    return 0


def cmd_evaluate(args) -> int:
    from ..data.split import evaluation_channel
    from ..evaluate import evaluate_model

    channel = evaluation_channel(args.data)
    summary, paths = evaluate_model(args.model_dir, channel, args.out, batch_size=args.batch_size)
    out = {k: summary[k] for k in ("n", "accuracy", "rmse", "per_class_recall")}
    if "expected_count" in summary:  # the expected-count decoding; its confusion matrix is in the report
        out["expected_count"] = {k: v for k, v in summary["expected_count"].items() if k != "confusion_matrix"}
    print(json.dumps(out))
    log.info("report: %s%s", ", ".join(map(str, paths)), "" if args.out else " (in --model-dir; --out DIR to write "
             "it elsewhere)")
    return 0


def stride(text: str) -> int:
    """--fp32-stride: 0 or a power of two from 2 (an output stride)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0 or n == 1 or (n & (n - 1)):
        raise argparse.ArgumentTypeError(f"expected 0 or a power of two (2, 4, 8, ...), got {text!r}")
    return n


#: `export --quantize int8 --require-servable`: INT8 written but not servable (2 is a usage error, 1 a crash)
NOT_SERVABLE_EXIT = 3


def cmd_export(args) -> int:
    from ..artifact import ONNX

    int8_flags = [f for f, v in (("--calibration", args.calibration), ("--test", args.test),
                                 ("--force-servable", args.force_servable), ("--strict-gate", args.strict_gate),
                                 ("--require-servable", args.require_servable),
                                 ("--fp32-stride", args.fp32_stride is not None),
                                 ("--for-cpu", args.for_cpu is not None),
                                 ("--calibration-images", args.calibration_images is not None),
                                 ("--max-accuracy-drop", args.max_accuracy_drop is not None)) if v]
    if args.quantize and not args.calibration:
        raise UserError("--quantize int8 needs --calibration DIR (a val channel: its images set the INT8 ranges)")
    if int8_flags and not args.quantize:
        raise UserError(f"{int8_flags[0]} only applies with --quantize int8")
    for flag, given in (("--strict-gate", args.strict_gate), ("--require-servable", args.require_servable)):
        if given and args.force_servable:
            raise UserError(f"{flag} and --force-servable contradict each other: --force-servable marks INT8 "
                            "servable whatever the test says")
    if args.quantize:
        import importlib.util

        if not importlib.util.find_spec("onnxruntime"):
            raise UserError("--quantize needs ONNX Runtime: pip install onnxruntime")
        for flag, path in (("--calibration", args.calibration), ("--test", args.test)):
            if path is not None and not Path(path).is_dir():
                raise UserError(f"{flag} {path}: not a directory (a channel: DIR/<count>/<id>.jpg, or shards)")
    from ..model import export_onnx

    config = export_onnx(args.model_dir, opset=args.opset)
    meta = config["onnx"]
    path = Path(args.model_dir) / ONNX
    if args.check:
        import importlib.util

        import numpy as np

        from ..evaluate import Predictor
        from ..serving.onnx_runtime import OnnxPredictor

        if not importlib.util.find_spec("onnxruntime"):
            raise UserError("--check needs ONNX Runtime: pip install onnxruntime (model.onnx is written)")
        x = np.random.default_rng(0).normal(size=(4, 3, *(2 * [config["preprocess"]["image_size"]])))
        x = x.astype(np.float32)
        diff = float(np.abs(Predictor(args.model_dir, device="cpu").forward(x)
                            - OnnxPredictor(args.model_dir).forward(x)).max())
        log.info("ONNX Runtime vs PyTorch on 4 random inputs: max |probability difference| %.2e", diff)
        if diff > 1e-4:
            raise UserError(f"{path}: ONNX Runtime and PyTorch disagree by {diff:.2e} (> 1e-4)")
    print(f"{path}  opset {meta['opset']}  {path.stat().st_size / 1e6:.1f} MB  sha256 {meta['sha256'][:12]}")
    if args.quantize:
        import dataclasses

        from ..artifact import ONNX_INT8
        from ..quantize import DEFAULT, VNNI, quantize_int8

        settings = VNNI if args.for_cpu == "vnni" else DEFAULT
        if args.fp32_stride is not None:
            settings = dataclasses.replace(settings, fp32_stride=args.fp32_stride)
        given = {k: v for k, v in (("calibration_images", args.calibration_images),
                                   ("max_drop", args.max_accuracy_drop)) if v is not None}
        record = quantize_int8(args.model_dir, args.calibration, args.test, force_servable=args.force_servable,
                               settings=settings, strict=args.strict_gate, **given)  # unset: its defaults
        path = Path(args.model_dir) / ONNX_INT8
        vnni = "  needs a CPU with VNNI" if record["settings"]["needs_vnni"] else ""
        print(f"{path}  {record['settings']['quant_format']} {path.stat().st_size / 1e6:.1f} MB  "
              f"sha256 {record['sha256'][:12]}{vnni}  {record['why']}")
        if args.require_servable and not record["servable"]:
            log.error("--require-servable: %s is not servable (the CPU image would serve model.onnx): exit %d",
                      path, NOT_SERVABLE_EXIT)
            return NOT_SERVABLE_EXIT
    return 0


def cmd_predict(args) -> int:
    from ..data.dataset import IMAGE_SUFFIXES
    from ..errors import DataError
    from ..evaluate import Predictor
    from ..serving.protocol import clean_message

    pred = Predictor(args.model_dir)
    paths = []
    for p in map(Path, args.images):  # a folder means the images in it, recursively
        paths += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    failed = 0
    try:
        for path in paths:
            try:
                out = pred.predict([path.read_bytes()])[0]
            except (OSError, DataError) as e:  # named, counted, and the other images still get their answer
                why = f"{path}: {e.strerror if isinstance(e, OSError) else clean_message(str(e))}"
                if len(paths) == 1:
                    raise UserError(why) from None
                failed += 1
                log.error("%s", why)
                continue
            print(json.dumps({"image": str(path), **out}), flush=True)
    except BrokenPipeError:  # `bincounter predict ... | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if failed:
        raise UserError(f"{failed} of {len(paths)} images could not be read or decoded (named above)")
    if not paths:
        raise UserError("no images to predict (give image files or folders holding .jpg/.jpeg/.png)")
    return 0


def cmd_report(args) -> int:
    from ..report import local_report

    path = local_report(args.model_dir, args.output_dir, args.out)
    print(json.dumps({"report": str(path)}))
    return 0


def register(sub) -> None:
    """The commands train, evaluate, export, predict and report."""
    t = sub.add_parser("train", help="train the counter (EfficientNet transfer learning)",
                       formatter_class=Formatter,
                       description="Train on channel folders and write model.safetensors, config.json and "
                       "metrics.json to --model-dir. One line per epoch on stdout:\n"
                       "  epoch=N train_loss=X val_loss=X val_acc=X val_rmse=X best_val_acc=X rules_fired=X lr=X "
                       "epoch_time_s=X\n"
                       "Runs on CPU or GPU; under torchrun it trains with torch.distributed.")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on a channel", formatter_class=Formatter,
                       description="Accuracy, count RMSE, per-class recall and confusion matrix (JSON + PNG).")
    e.add_argument("--model-dir", required=True, help="a model directory (config.json + model.safetensors), e.g. "
                                                     "train's --model-dir or an unpacked model.tar.gz")
    e.add_argument("--data", required=True, help="channel: DIR/<count>/<id>.jpg, or shards (bincounter data shard); "
                   "the whole output of data split or data shard (train/ val/ test/) means its test split")
    e.add_argument("--out", help="report directory (default: --model-dir)")
    e.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (memory, not results)")
    e.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="add model.onnx (for the CPU serving image) to a saved model",
                        formatter_class=Formatter,
                        description="Export a model directory's weights to ONNX beside them (model.onnx: input "
                                    "`image` float32 N x 3 x S x S, preprocessed as config.json says; output "
                                    "`probabilities`; N dynamic) and record its sha256 in config.json. `bincounter "
                                    "train` does this itself; use it for models trained before, or after copying "
                                    "in other weights. The CPU image (`make image-cpu`) serves model.onnx, or "
                                    "model.int8.onnx (--quantize int8) when config.json marks it servable.")
    ex.add_argument("--model-dir", required=True, help="a model directory (config.json + model.safetensors), e.g. "
                                                      "an unpacked model.tar.gz")
    ex.add_argument("--opset", type=positive_int, default=ONNX_OPSET,
                    help=f"ONNX opset, {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]} (why {ONNX_OPSET}: artifact.ONNX_OPSET)")
    ex.add_argument("--check", action="store_true",
                    help="also run ONNX Runtime against PyTorch and fail beyond 1e-4 (needs onnxruntime)")
    q = ex.add_argument_group("INT8 (the CPU image serves model.int8.onnx when config.json marks it servable)")
    q.add_argument("--quantize", choices=["int8"],
                   help="also write model.int8.onnx (replacing an earlier one): ONNX Runtime static quantization "
                        "(QDQ, per-channel, uint8 activations, int8 weights: 7-bit, or 8-bit with --for-cpu vnni), "
                        "evaluated against model.onnx on --test. Exits 0 whether or not it is servable (unless "
                        "--require-servable): the last line and config.json's onnx_int8.servable say which")
    q.add_argument("--calibration", metavar="DIR", help="val channel whose images calibrate the INT8 ranges "
                                                        "(per-image or sharded)")
    q.add_argument("--calibration-images", type=positive_int, metavar="N",
                   help="calibration images taken from --calibration (default: 100)")
    q.add_argument("--test", metavar="DIR", help="test channel: accuracy, RMSE and changed counts of both models, "
                                                 "in config.json; without it INT8 is not marked servable")
    q.add_argument("--fp32-stride", type=stride, metavar="N",
                   help="keep in fp32 the convolutions with output stride <= N (0, 2, 4, 8, ...): the first, "
                        "highest-resolution layers. 4 halved the changed counts of the demo model, but slower: 1.26x "
                        "fp32 instead of 1.45x there, 0.80x (slower than fp32) on efficientnet_b0 at 224 px "
                        "(default 0: quantize all; docs/PERFORMANCE.md#int8)")
    q.add_argument("--for-cpu", choices=["any", "vnni"],
                   help="any (default): 7-bit weights, exact on every x86 CPU; vnni: full 8-bit weights, closer to "
                        "fp32 where the CPU has VNNI (measured on an AMD Zen 5 VM; expected on ml.c6i, ml.m6i, "
                        "ml.c7i); a CPU image without VNNI serves fp32 instead, so an endpoint on ml.c5/ml.m5 "
                        "(Skylake or Cascade Lake hosts) can mix both: set BINCOUNTER_ONNX_PRECISION=int8 to make "
                        "such instances fail instead. Measure it on such a CPU (docs/PERFORMANCE.md#vnni)")
    q.add_argument("--max-accuracy-drop", type=fraction, metavar="F",
                   help="mark INT8 servable only if its test accuracy is at most F below fp32's (default: 0.01; "
                        "on 90 test images one image more wrong is 0.011)")
    q.add_argument("--force-servable", action="store_true",
                   help="mark INT8 servable even over the drop limit or without --test (recorded as forced)")
    q.add_argument("--strict-gate", action="store_true",
                   help="judge the drop's one-sided 95%% upper bound (drop + 1.645 standard errors of the paired "
                        "difference, at least one image), not the drop measured: servable only when the test "
                        "channel shows the drop is within F (thousands of test images for F = 0.01 when ~10%% "
                        "of the counts change)")
    q.add_argument("--require-servable", action="store_true",
                   help="exit 3 when INT8 is written but not servable (for a build that must ship INT8; 2 is a "
                        "usage error)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="count the items in image files with a saved model",
                        formatter_class=Formatter)
    pr.add_argument("--model-dir", required=True)
    pr.add_argument("images", nargs="+", help="JPEG/PNG files, or folders (their images, recursively); one JSON line "
                    "per image; an unreadable image is named on stderr and the others still get their answer")
    pr.set_defaults(func=cmd_predict)

    rp = sub.add_parser("report", help="one self-contained HTML report of a training run", formatter_class=Formatter,
                        description="Training curves, the training rules that fired, system utilisation and test "
                        "metrics (confusion matrix embedded) of a `bincounter train` run, in one HTML file. For a "
                        "SageMaker job: `bincounter sm report JOB`.")
    rp.add_argument("model_dir", metavar="MODEL_DIR", help="the run's --model-dir")
    rp.add_argument("--output-dir", help="the run's --output-dir, if it had one (read first)")
    rp.add_argument("--out", help="HTML file to write (default: OUTPUT_DIR/report.html, else MODEL_DIR/report.html)")
    rp.set_defaults(func=cmd_report)

"""The sagemaker-inference handler functions that MMS workers run.

model_fn loads the artifact with `Predictor` (the same decode/resize/normalisation as evaluation), pinned
to the worker's own GPU (`gpu_id` from MMS) when there is one. Errors become JSON with a 4xx status.
"""

from __future__ import annotations

import logging
import os

import torch
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.errors import GenericInferenceToolkitError
from sagemaker_inference.transformer import Transformer

from ..errors import DataError
from ..evaluate import Predictor
from .protocol import RequestError, error_body, format_response, parse_request

log = logging.getLogger("bincounter.serving")


def worker_device(context) -> str:
    gpu_id = None
    if context is not None:
        gpu_id = (context.system_properties or {}).get("gpu_id")
    if torch.cuda.is_available() and gpu_id is not None:
        return f"cuda:{int(gpu_id) % torch.cuda.device_count()}"
    return "cpu"


class InferenceHandler(DefaultInferenceHandler):
    def default_model_fn(self, model_dir, context=None):
        device = worker_device(context)
        if device == "cpu":
            workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1") or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        pred = Predictor(model_dir, device=device)
        log.info("model %s (%s, %d px) loaded on %s", pred.config["model_version"], pred.config["arch"],
                 pred.pre.image_size, device)
        return pred

    def default_input_fn(self, input_data, content_type, context=None):
        try:
            return parse_request(input_data, content_type)
        except RequestError as e:
            raise GenericInferenceToolkitError(e.status, e.message) from None

    def default_predict_fn(self, data, model: Predictor, context=None):
        images, is_batch = data
        tensors = []
        for i, b in enumerate(images):
            try:
                tensors.append(model.preprocess(b))
            except DataError as e:
                status = 413 if "megapixels" in str(e) else 400
                where = f"instance {i}: " if is_batch else ""
                raise GenericInferenceToolkitError(status, f"{where}{e}") from None
        return model.format(model.forward(torch.stack(tensors))), is_batch

    def default_output_fn(self, prediction, accept, context=None):
        predictions, is_batch = prediction
        return format_response(predictions, is_batch), "application/json"


class JsonTransformer(Transformer):
    """sagemaker-inference's Transformer with JSON error bodies (it sends message + traceback as text)."""

    @staticmethod
    def handle_error(context, inference_exception, trace):
        status = int(getattr(inference_exception, "status_code", 500))
        message = str(inference_exception.message).strip().splitlines()[0] if inference_exception.message \
            else "internal error"
        if status >= 500:
            log.error("inference failed: %s", trace)
        context.set_response_status(code=status, phrase="Error")
        context.set_response_content_type(0, "application/json")
        return [error_body(status, message)]

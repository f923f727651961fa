"""What MMS workers run (through sagemaker-inference's handler service).

The runtime is ONNX Runtime in the CPU image (BINCOUNTER_RUNTIME=onnx: `onnx_runtime.OnnxPredictor`, no
PyTorch) and PyTorch elsewhere; request parsing, preprocessing and answers are the same code for both.
With PyTorch, model_fn loads the artifact with `Predictor` (the same decode/resize/normalisation as evaluation), pinned
to the worker's own GPU when there is one: MMS gives worker k `gpu_id` k, `worker_device` maps it onto the
visible GPUs ("cuda:2"), and that device is both the current CUDA device of the worker process and the one
`Predictor` puts the model on (`distributed.pick_device` honours the index), so N workers use N GPUs. The
requests of one MMS batch (dynamic batching, `BINCOUNTER_BATCH_SIZE`) are answered with one forward pass of
at most `BINCOUNTER_MAX_FORWARD_BATCH` images (64; more run in chunks), each request isolated from the others;
errors become JSON {"error", "status"} (4xx for the request's own fault). On CPU both runtimes take their
threads from `onnx_runtime.session_threads` (the CPUs of affinity and cgroup quota, shared among the workers).
"""

from __future__ import annotations

import logging
import traceback

from sagemaker_inference import utils
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.transformer import Transformer

from .onnx_runtime import OnnxPredictor, runtime_name, session_threads
from .protocol import answer_batch, error_body

log = logging.getLogger("bincounter.serving")


def worker_device(context) -> str:
    """"cuda:<gpu_id mod visible GPUs>" for an MMS worker on a GPU host, else "cpu"."""
    import torch

    gpu_id = None
    if context is not None:
        gpu_id = (context.system_properties or {}).get("gpu_id")
    if torch.cuda.is_available() and gpu_id is not None:
        return f"cuda:{int(gpu_id) % torch.cuda.device_count()}"
    return "cpu"


class InferenceHandler(DefaultInferenceHandler):
    def default_model_fn(self, model_dir, context=None):
        if runtime_name() == "onnx":
            pred = OnnxPredictor(model_dir)
            log.info("model %s (%s, %d px) loaded on ONNX Runtime from %s (%s), %d threads", pred.model_version,
                     pred.config["arch"], pred.pre.image_size, pred.model_file, pred.why,
                     pred.session.get_session_options().intra_op_num_threads)
            return pred
        import torch

        from ..evaluate import Predictor

        device = worker_device(context)
        if device == "cpu":
            # the ONNX worker's policy: the CPUs this process may use (affinity, cgroup quota) shared out among
            # the MMS workers; cpu_count // workers oversubscribed a busy host (1.2 s a pass with 2 threads vs
            # 22 ms with 1)
            torch.set_num_threads(session_threads())
        else:
            # CUDA work that names no device (cuDNN/cuBLAS handles, caches) lands on this worker's GPU too
            torch.cuda.set_device(torch.device(device))
        pred = Predictor(model_dir, device=device)
        if str(pred.device) != device:
            log.error("worker pinned to %s but the model is on %s", device, pred.device)
        log.info("model %s (%s, %d px) loaded on %s", pred.config["model_version"], pred.config["arch"],
                 pred.pre.image_size, device)
        return pred


def _header(headers, name: str) -> str | None:
    """A request header by name, whatever its case (MMS passes them as it got them)."""
    for key, value in (headers or {}).items():
        if str(key).lower() == name:
            return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    return None


class JsonTransformer(Transformer):
    """sagemaker-inference's Transformer, with `transform` replaced: the stock one runs one forward pass per
    request of an MMS batch, reads every request's content type from the first one, and answers a failure
    for the whole batch with a single text body. Here all requests of a batch go through one forward pass
    (`protocol.answer_batch`), each with its own content type, status and JSON body."""

    def transform(self, data, context):
        try:
            self.validate_and_initialize(model_dir=context.system_properties.get("model_dir"), context=context)
        except Exception as e:  # noqa: BLE001 - model_fn failed: every request of the batch gets the 500
            log.error("model failed to load: %s", traceback.format_exc())
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return self._answer(context, [(500, error_body(500, f"model failed to load: {message}"))] * len(data))
        requests = []
        for i, item in enumerate(data):
            headers = context.request_processor[i].get_request_properties()
            requests.append((item.get("body"), utils.retrieve_content_type_header(headers), _header(headers, "accept")))
        try:
            answers = answer_batch(self._model, requests)
        except Exception:  # noqa: BLE001 - a bug or a device error: 500 with one line, the trace in the log
            log.error("inference failed: %s", traceback.format_exc())
            answers = [(500, error_body(500, "internal error during inference (see the endpoint log)"))] * len(data)
        return self._answer(context, answers)

    @staticmethod
    def _answer(context, answers: list[tuple[int, bytes]]) -> list[bytes]:
        # No response header at all, not even the content type (which MMS's Context also keeps in the header map):
        # MMS 1.1's frontend decodes a header map without waiting for the rest of a frame that arrived in two
        # reads (CodecUtils.readMap passes BUFFER_UNDER_RUN, -3, on as a length: "CorruptedFrameException:
        # Invalid message size: -3"), then closes the worker's connection and every request it held fails with
        # "Worker died." Seen under load with one content-type header per request of a batch. An empty map is
        # never read; the front answers every /invocations with Content-Type: application/json itself.
        for i, (status, _) in enumerate(answers):
            if status != 200:
                context.set_response_status(code=status, phrase="Error", idx=i)
        return [body for _, body in answers]

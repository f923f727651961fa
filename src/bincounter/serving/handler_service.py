"""The MMS service entry (`default_service_handler`). MMS requires exactly one class in this module."""

from sagemaker_inference.default_handler_service import DefaultHandlerService

from .inference import InferenceHandler, JsonTransformer


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=JsonTransformer(default_inference_handler=InferenceHandler()))

#!/bin/sh
# The image's dispatcher. SageMaker runs `IMAGE train` or `IMAGE serve`, a pipeline's processing steps
# `IMAGE process prepare|evaluate`; SageMaker local mode (SDK v3) runs the image with no argument for training. Anything else is executed as given (e.g. `bash`).
set -e
cmd="${1:-train}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  train)
    if [ "${BINCOUNTER_RUNTIME:-}" = onnx ]; then
      echo "bincounter: this is the CPU serving image (ONNX Runtime, no PyTorch): it serves, it does not train;" \
           "train with the GPU image (the Dockerfile's default target)" >&2
      exit 2
    fi
    # sagemaker-training's `train` sets up the contract (/opt/ml, logging, failure file) and calls
    # $SAGEMAKER_TRAINING_MODULE = bincounter.sagemaker.train_entry:main, which launches torchrun.
    exec train "$@" ;;
  process)
    # SageMaker Processing (the pipeline's prepare / evaluate steps): a failure's one line -> ExitMessage
    BINCOUNTER_FAILURE_FILE=/opt/ml/output/message exec bincounter process "$@" ;;
  serve)
    # multi-model-server (sagemaker-inference) behind bincounter's health-gated front on :8080
    exec python -m bincounter.serving.server "$@" ;;
  *)
    if [ "${BINCOUNTER_RUNTIME:-}" = onnx ] && [ "$cmd" = bincounter ]; then
      echo "bincounter: the CPU serving image has no PyTorch and runs only \`serve\`; use the default image or" \
           "pip install bincounter for the CLI (train, export, evaluate...)" >&2
      exit 2
    fi
    exec "$cmd" "$@" ;;
esac

#!/bin/sh
# The image's dispatcher. SageMaker runs `IMAGE train` or `IMAGE serve`; SageMaker local mode (SDK v3)
# runs the image with no argument for training. Anything else is executed as given (e.g. `bash`).
set -e
cmd="${1:-train}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  train)
    # sagemaker-training's `train` sets up the contract (/opt/ml, logging, failure file) and calls
    # $SAGEMAKER_TRAINING_MODULE = bincounter.sagemaker.train_entry:main, which launches torchrun.
    exec train "$@" ;;
  serve)
    # multi-model-server (sagemaker-inference) behind bincounter's health-gated front on :8080
    exec python -m bincounter.serving.server "$@" ;;
  *)
    exec "$cmd" "$@" ;;
esac

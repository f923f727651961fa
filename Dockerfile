# bincounter's images, from one Dockerfile (multi-stage):
#
#   default target `gpu`: ONE image that trains (`docker run IMAGE train`, or no argument) and serves
#       (`docker run IMAGE serve`, PyTorch) under SageMaker's bring-your-own-container contract.
#   --target serve-cpu: serving only, on ONNX Runtime (model.onnx): no torch, no CUDA, a fraction of the size;
#       for CPU instances and serverless endpoints. The same front, model server, protocol and handlers.
#
# Production base: debian:bookworm-slim (Python 3.11 from Debian). The PyTorch wheels from PyPI carry their
# own CUDA 12.8 user-space libraries (cuBLAS, cuDNN, NCCL); the GPU *driver* comes from the host, which
# SageMaker's NVIDIA container runtime mounts in. So no CUDA base image is needed.
# Local builds (no Docker Hub): container/build_local.sh passes a bookworm made by mmdebstrap instead.
#
# Stage order: the `gpu` stage is last, so a plain `docker build .` gives it. Docker's classic builder (no
# BuildKit) also builds the serve-cpu stages on the way; they are small and cached after the first build.
ARG BASE_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------------------- build-base
# Everything that needs a compiler or the network happens in the builder stages; only /opt/venv leaves them.
FROM ${BASE_IMAGE} AS build-base
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Optional extra CA bundle for pip behind a TLS-intercepting proxy: container/certs/*.pem (the build
# scripts copy it there from --ca-bundle / $PIP_CERT). It lives in the builder stages only.
COPY container/certs/ /tmp/certs/
RUN cat /etc/ssl/certs/ca-certificates.crt /tmp/certs/*.pem > /tmp/ca.pem 2>/dev/null \
     || cp /etc/ssl/certs/ca-certificates.crt /tmp/ca.pem
ENV PIP_CERT=/tmp/ca.pem PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade "pip>=24"

# ----------------------------------------------------------------------------------------- runtime-base
FROM ${BASE_IMAGE} AS runtime-base
ENV DEBIAN_FRONTEND=noninteractive
# python3 for the venv, Java 17 for multi-model-server, tini as PID 1 (signals, zombie reaping)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_DISABLE_TELEMETRY=1
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
EXPOSE 8080
WORKDIR /opt/ml
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh"]

# ----------------------------------------------------------------------------------- serve-cpu (target)
FROM build-base AS builder-cpu
COPY container/requirements-cpu.txt /tmp/requirements-cpu.txt
RUN pip install -r /tmp/requirements-cpu.txt && pip check

FROM runtime-base AS serve-cpu
COPY --from=builder-cpu /opt/venv /opt/venv
# the worker runs model.onnx on ONNX Runtime (serving/onnx_runtime.py); `train` is refused in one line
ENV BINCOUNTER_RUNTIME=onnx
COPY pyproject.toml README.md /opt/bincounter/
COPY src /opt/bincounter/src
RUN pip install --no-deps --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check /opt/bincounter \
 && rm -rf /opt/bincounter/build
COPY container/entrypoint.sh /opt/bincounter/container/entrypoint.sh
LABEL org.opencontainers.image.title="bincounter-cpu" \
      org.opencontainers.image.description="EfficientNet bin item counter: SageMaker CPU serving (ONNX Runtime)"

# ------------------------------------------------------------------------------------ gpu (default target)
FROM build-base AS builder
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
# torch first: the biggest, slowest-changing layer. Pin rationale: see README "Why torch 2.9.1 / CUDA 12.8".
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY container/requirements.txt /tmp/requirements.txt
# sagemaker-training compiles a C extension here (gcc + python3-dev stay in this stage)
RUN pip install -r /tmp/requirements.txt && pip check

FROM runtime-base AS gpu
COPY --from=builder /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SAGEMAKER_TRAINING_MODULE=bincounter.sagemaker.train_entry:main
# the code: last, so a code change rebuilds only these small layers
COPY pyproject.toml README.md /opt/bincounter/
COPY src /opt/bincounter/src
RUN pip install --no-deps --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check /opt/bincounter \
 && rm -rf /opt/bincounter/build
COPY container/entrypoint.sh /opt/bincounter/container/entrypoint.sh
LABEL org.opencontainers.image.title="bincounter" \
      org.opencontainers.image.description="EfficientNet bin item counter: SageMaker train + serve"

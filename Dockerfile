# bincounter: ONE image that trains (`docker run IMAGE train`, or no argument) and serves
# (`docker run IMAGE serve`) under SageMaker's bring-your-own-container contract.
#
# Production base: debian:bookworm-slim (Python 3.11 from Debian). The PyTorch wheels from PyPI carry their
# own CUDA 12.8 user-space libraries (cuBLAS, cuDNN, NCCL); the GPU *driver* comes from the host, which
# SageMaker's NVIDIA container runtime mounts in. So no CUDA base image is needed.
# Local builds (no Docker Hub): container/build_local.sh passes a bookworm made by mmdebstrap instead.
ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------- builder
# Everything that needs a compiler or the network happens here; only /opt/venv leaves this stage.
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Optional extra CA bundle for pip behind a TLS-intercepting proxy: container/certs/*.pem (the build
# scripts copy it there from --ca-bundle / $PIP_CERT). It lives in this stage only.
COPY container/certs/ /tmp/certs/
RUN cat /etc/ssl/certs/ca-certificates.crt /tmp/certs/*.pem > /tmp/ca.pem 2>/dev/null \
     || cp /etc/ssl/certs/ca-certificates.crt /tmp/ca.pem
ENV PIP_CERT=/tmp/ca.pem PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade "pip>=24"
# torch first: the biggest, slowest-changing layer. Pin rationale: see README "Why torch 2.9.1 / CUDA 12.8".
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY container/requirements.txt /tmp/requirements.txt
# sagemaker-training compiles a C extension here (gcc + python3-dev stay in this stage)
RUN pip install -r /tmp/requirements.txt && pip check

# ------------------------------------------------------------------------------------------------ final
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# python3 for the venv, Java 17 for multi-model-server, tini as PID 1 (signals, zombie reaping)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SAGEMAKER_TRAINING_MODULE=bincounter.sagemaker.train_entry:main \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_DISABLE_TELEMETRY=1
# the code: last, so a code change rebuilds only these small layers
COPY pyproject.toml README.md /opt/bincounter/
COPY src /opt/bincounter/src
RUN pip install --no-deps --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check /opt/bincounter \
 && rm -rf /opt/bincounter/build
COPY container/entrypoint.sh /opt/bincounter/container/entrypoint.sh
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title="bincounter" \
      org.opencontainers.image.description="EfficientNet bin item counter: SageMaker train + serve"
EXPOSE 8080
WORKDIR /opt/ml
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh"]

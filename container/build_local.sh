#!/usr/bin/env bash
# Build the production Dockerfile where Docker Hub is out of reach: make a Debian bookworm base locally
# (mmdebstrap -> docker import) and pass it as BASE_IMAGE. Nothing else differs from a production build.
#
#   container/build_local.sh [--tag bincounter:local] [--target gpu|serve-cpu] [--ca-bundle FILE | --no-ca-bundle]
#                            [--base-tag NAME] [--rebuild-base]
#   (--target serve-cpu: the CPU serving image, default tag bincounter:cpu)
#
# Starts dockerd when no daemon answers (installing docker.io when missing). Prints the image name last.
set -euo pipefail

TAG=""
STAGE=gpu
BASE_TAG=bincounter-base:bookworm
# pip in the builder trusts the host's CAs: $PIP_CERT, else the system bundle (which carries a proxy's CA
# wherever the host's own pip works); builder stage only, never in the final image
CA_BUNDLE="${PIP_CERT:-}"
if [ -z "$CA_BUNDLE" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt; fi
REBUILD_BASE=0
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    --target) STAGE="$2"; shift 2 ;;
    --base-tag) BASE_TAG="$2"; shift 2 ;;
    --ca-bundle) CA_BUNDLE="$2"; shift 2 ;;
    --no-ca-bundle) CA_BUNDLE=""; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build_local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$STAGE" in
  gpu) TAG="${TAG:-bincounter:local}" ;;
  serve-cpu) TAG="${TAG:-bincounter:cpu}" ;;
  *) echo "build_local.sh: --target must be gpu or serve-cpu" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "build_local: $*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "needs root to install $1 (run as root or install it yourself)"; exit 1; }; }

# --- a Docker daemon -------------------------------------------------------------------------------
ensure_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    need_root docker.io
    log "installing docker.io docker-compose"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >&2
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    (setsid dockerd >/var/log/dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
  fi
}

# --- the base image --------------------------------------------------------------------------------
ensure_base() {
  if [ "$REBUILD_BASE" = 0 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "base $BASE_TAG present"; return
  fi
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    need_root mmdebstrap
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
  fi
  log "making $BASE_TAG with mmdebstrap (Debian bookworm, minbase)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm - | docker import - "$BASE_TAG" >&2
}

ensure_docker
ensure_base

# --- the build: the same script and Dockerfile as production, with the local base -------------------
[[ "$TAG" == *:* ]] || TAG="$TAG:latest"
args=(--no-push --no-latest --base-image "$BASE_TAG" --tag "${TAG##*:}")
if [ -n "$CA_BUNDLE" ]; then args+=(--ca-bundle "$CA_BUNDLE"); fi
if [ "$STAGE" != gpu ]; then args+=(--target "$STAGE"); fi
"$ROOT/build_and_push.sh" "${args[@]}" "${TAG%:*}" >/dev/null
echo "$TAG"

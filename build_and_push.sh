#!/usr/bin/env bash
# Build the bincounter image and push it to Amazon ECR (or another registry).
#
# Usage: ./build_and_push.sh [options] [IMAGE_NAME]   (IMAGE_NAME default: bincounter; bincounter-cpu with
#                                                      --target serve-cpu, its own ECR repository)
#
#   --target T            Dockerfile target: gpu (default: trains and serves, PyTorch + CUDA) or serve-cpu
#                         (serving only, ONNX Runtime, no torch: CPU instances and serverless endpoints)
#   --region R            AWS region (else AWS_REGION, AWS_DEFAULT_REGION, the profile's region)
#   --profile P           AWS CLI profile
#   --tag T               image tag (default: git short SHA, plus -dirty-<hash> when what goes into the image
#                         (src/, container/, Dockerfile, pyproject.toml, README.md) has uncommitted or
#                         untracked files)
#   --print-tag           print the tag that would be used and exit (no Docker, no AWS)
#   --no-latest           do not also tag and push :latest
#   --base-image IMG      BASE_IMAGE build argument (default: the Dockerfile's, debian:bookworm-slim)
#   --build-arg K=V       extra docker build argument (repeatable)
#   --platform P          target platform (default linux/amd64, what SageMaker runs)
#   --ca-bundle FILE      extra CA bundle for pip behind a TLS-intercepting proxy (builder stage only)
#   --tag-mutability M    MUTABLE (default) or IMMUTABLE, for a newly created repository
#   --no-push             build and tag locally only; no AWS calls
#   --registry HOST       push to HOST instead of <account>.dkr.ecr.<region>.amazonaws.com
#   --endpoint-url URL    endpoint for the AWS API calls (STS, ECR), e.g. a test server
#   --file F, --context D Dockerfile and build context (default: ./Dockerfile and the repo root; .dockerignore
#                         keeps the context to what the image copies: src/, container/, pyproject.toml, README.md)
#   --keep-failed-layers  after a failed build keep the layers it made (a rerun starts from them); by default a
#                         failed build leaves nothing behind: its step container always goes (--force-rm) and the
#                         images it made are removed (not the base, nor layers taken from the cache)
#   -h, --help            this help
#
# stdout: only the full image URI, last (IMAGE=$(./build_and_push.sh ...) works); everything else: stderr.
# Needs: docker, and the bincounter package (for the AWS calls; `make venv` installs it in .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME=""
STAGE=""
TAG=""
LATEST=1
PUSH=1
PLATFORM=linux/amd64
MUTABILITY=MUTABLE
REGION="" PROFILE="" REGISTRY="" ENDPOINT="" BASE_IMAGE="" CA_BUNDLE=""
DOCKERFILE="$ROOT/Dockerfile"
CONTEXT="$ROOT"
BUILD_ARGS=()
PRINT_TAG=0
KEEP_FAILED=0
# what the Dockerfile copies into the image: a change here (untracked files too) makes the default tag dirty
IMAGE_PATHS=(src container Dockerfile pyproject.toml README.md)

log() { echo "build_and_push: $*" >&2; }
die() { echo "build_and_push: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --region) need_value "$@"; REGION="$2"; shift 2 ;;
    --profile) need_value "$@"; PROFILE="$2"; shift 2 ;;
    --tag) need_value "$@"; TAG="$2"; shift 2 ;;
    --target) need_value "$@"; STAGE="$2"; shift 2 ;;
    --no-latest) LATEST=0; shift ;;
    --print-tag) PRINT_TAG=1; shift ;;
    --base-image) need_value "$@"; BASE_IMAGE="$2"; shift 2 ;;
    --build-arg) need_value "$@"; BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
    --platform) need_value "$@"; PLATFORM="$2"; shift 2 ;;
    --ca-bundle) need_value "$@"; CA_BUNDLE="$2"; shift 2 ;;
    --tag-mutability) need_value "$@"; MUTABILITY="$2"; shift 2 ;;
    --no-push) PUSH=0; shift ;;
    --registry) need_value "$@"; REGISTRY="$2"; shift 2 ;;
    --endpoint-url) need_value "$@"; ENDPOINT="$2"; shift 2 ;;
    --file) need_value "$@"; DOCKERFILE="$2"; shift 2 ;;
    --context) need_value "$@"; CONTEXT="$2"; shift 2 ;;
    --keep-failed-layers) KEEP_FAILED=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) NAME="$1"; shift ;;
  esac
done

case "$STAGE" in
  ""|gpu) NAME="${NAME:-bincounter}" ;;
  serve-cpu) NAME="${NAME:-bincounter-cpu}" ;;
  *) die "--target must be gpu or serve-cpu (got '$STAGE')" ;;
esac
[[ "$NAME" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "image name '$NAME' is not a valid repository name"
case "$MUTABILITY" in MUTABLE|IMMUTABLE) ;; *) die "--tag-mutability must be MUTABLE or IMMUTABLE" ;; esac
[ -f "$DOCKERFILE" ] || die "Dockerfile $DOCKERFILE not found"

# --- the tag -----------------------------------------------------------------------------------------
if [ -z "$TAG" ]; then
  if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
    TAG="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
    if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=all -- "${IMAGE_PATHS[@]}")" ]; then
      # the hash covers tracked changes and the untracked files' names and contents
      state="$( { git -C "$ROOT" diff HEAD -- "${IMAGE_PATHS[@]}"
                  git -C "$ROOT" ls-files --others --exclude-standard -z -- "${IMAGE_PATHS[@]}" \
                    | (cd "$ROOT" && xargs -0 -r sha256sum); } | sha256sum | cut -c1-8)"
      TAG="$TAG-dirty-$state"
    fi
  else
    die "not a git checkout: pass --tag"
  fi
fi
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "tag '$TAG' is not a valid Docker tag"
if [ "$PRINT_TAG" = 1 ]; then echo "$TAG"; exit 0; fi

# --- tools -------------------------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (${DOCKER_HOST:-unix:///var/run/docker.sock}); start dockerd"
BINCOUNTER=()
if [ "$PUSH" = 1 ]; then
  if command -v bincounter >/dev/null 2>&1; then BINCOUNTER=(bincounter)
  elif [ -x "$ROOT/.venv/bin/bincounter" ]; then BINCOUNTER=("$ROOT/.venv/bin/bincounter")
  else die "the bincounter package is needed for the AWS calls: run 'make venv' or 'pip install -e .[aws]'"; fi
fi
set_aws_opts() {
  aws_opts=()
  if [ -n "$REGION" ]; then aws_opts+=(--region "$REGION"); fi
  if [ -n "$PROFILE" ]; then aws_opts+=(--profile "$PROFILE"); fi
  if [ -n "$ENDPOINT" ]; then aws_opts+=(--endpoint-url "$ENDPOINT"); fi
}
set_aws_opts
ecr() { "${BINCOUNTER[@]}" -q ecr "$1" "${aws_opts[@]}" "${@:2}"; }


# --- AWS: account, registry, repository, login -------------------------------------------------------
if [ "$PUSH" = 1 ]; then
  REGION="$(ecr region)" || exit 1
  set_aws_opts
  ACCOUNT="$(ecr account)" || exit 1
  log "account $ACCOUNT, region $REGION"
  REPO_URI="$(ecr ensure-repo "$NAME" --mutability "$MUTABILITY")" || exit 1
  if [ -z "$REGISTRY" ]; then
    REGISTRY="${REPO_URI%%/*}"
  fi
  # the password goes from the helper's stdout straight into docker's stdin: never on a terminal,
  # in a file or in the process list
  if ! login_out="$(ecr login-password | docker login --username AWS --password-stdin "$REGISTRY" 2>&1)"; then
    die "docker login to $REGISTRY failed: $(echo "$login_out" | tail -n 1)"
  fi
  log "logged in to $REGISTRY"
  TARGET="$REGISTRY/$NAME"
else
  TARGET="$NAME"
fi

# --- build -------------------------------------------------------------------------------------------
CERT_DST="$ROOT/container/certs/extra-ca.pem"
BUILD_LOG="$(mktemp)"
cleanup() { rm -f "$CERT_DST" "$BUILD_LOG"; }
trap cleanup EXIT
# The images a failed build made, newest first: each step's " ---> <id>" in the (legacy builder's) output, except
# a FROM step's (the base, or an earlier stage) and one that came from the cache (" ---> Using cache"). docker rmi
# without -f: an image that something still uses (a tag, a container, a child) stays.
remove_failed_layers() {
  local ids
  ids="$(awk 'toupper($0) ~ /^STEP [0-9]+\/[0-9]+ : / { from = (toupper($4) == "FROM"); cached = 0; next }
              /^ ---> Using cache/ { cached = 1; next }
              /^ ---> [0-9a-f]+$/ { if (!from && !cached) ids[n++] = $2 }
              END { while (n > 0) print ids[--n] }' "$BUILD_LOG")"
  [ -n "$ids" ] || return 0
  local id kept=0
  for id in $ids; do  # removing an image also removes its untagged parents that nothing else uses
    if [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ]; then
      docker rmi "$id" >/dev/null 2>&1 || true
    fi
  done
  for id in $ids; do if docker image inspect "$id" >/dev/null 2>&1; then kept=$((kept + 1)); fi; done
  local total
  total=$(echo "$ids" | wc -l | tr -d ' ')
  log "removed $((total - kept)) of the $total images the failed build made ($kept still in use by other images" \
      "or containers); --keep-failed-layers keeps them for a rerun"
}
if [ -n "$CA_BUNDLE" ]; then
  [ -r "$CA_BUNDLE" ] || die "CA bundle $CA_BUNDLE is not readable"
  cp "$CA_BUNDLE" "$CERT_DST"
  log "extra CA bundle $CA_BUNDLE for pip (builder stage only)"
fi
if [ -n "$BASE_IMAGE" ]; then BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
tags=(-t "$TARGET:$TAG")
if [ "$LATEST" = 1 ]; then tags+=(-t "$TARGET:latest"); fi
# no --target: the Dockerfile's last stage (ours: gpu), so a Dockerfile without named stages (--file) builds too
target_args=()
if [ -n "$STAGE" ]; then target_args=(--target "$STAGE"); fi
log "building $TARGET:$TAG ($PLATFORM, target ${STAGE:-the last stage}) from $DOCKERFILE"
start=$(date +%s)
# --force-rm: the container of a failing step goes too (--rm, the default, removes only those of steps that passed)
if ! docker build --force-rm --platform "$PLATFORM" "${target_args[@]}" "${BUILD_ARGS[@]}" "${tags[@]}" \
     -f "$DOCKERFILE" "$CONTEXT" 2>&1 | tee "$BUILD_LOG" >&2; then
  if [ "$KEEP_FAILED" = 0 ]; then remove_failed_layers; fi
  die "docker build failed (see the output above)"
fi
size=$(docker image inspect "$TARGET:$TAG" --format '{{.Size}}')
log "built in $(( $(date +%s) - start )) s; image size $(( size / 1000000 )) MB"

# --- push --------------------------------------------------------------------------------------------
if [ "$PUSH" = 1 ]; then
  pushed=()
  push_tags=("$TAG")
  if [ "$LATEST" = 1 ]; then push_tags+=(latest); fi
  for t in "${push_tags[@]}"; do
    if ! out="$(docker push "$TARGET:$t" 2>&1)"; then
      die "push of $TARGET:$t failed: $(echo "$out" | tail -n 1)${pushed[*]:+ (already pushed: ${pushed[*]})}"
    fi
    pushed+=("$t")
    log "pushed $TARGET:$t ($(echo "$out" | grep -o 'digest: sha256:[0-9a-f]*' | head -n 1))"
  done
  log "undo: docker rmi $TARGET:$TAG; delete the tag in ECR: aws ecr batch-delete-image --repository-name $NAME --image-ids imageTag=$TAG"
fi
echo "$TARGET:$TAG"

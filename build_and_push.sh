#!/usr/bin/env bash
# Build the image and push it to ECR. Not implemented yet (issue #5): for now build locally with
#   container/build_local.sh          (or: docker build -t bincounter:local .)
set -euo pipefail
echo "build_and_push.sh: not implemented yet (see issue #5); build locally with container/build_local.sh" >&2
exit 1

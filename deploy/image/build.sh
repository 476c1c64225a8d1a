#!/usr/bin/env bash
# Builds the Dockerfile with podman, offline but for the package registries, as written (build arguments only):
# the base image from base_image.sh, torch pinned to 2.13.0+cpu (a version only CPU wheels carry) from a local
# directory of wheels, its dependencies and every other package through this machine's pip configuration
# (mounted read-only into the RUN steps, with the CA bundle and the local indexes it names).
#
# Usage: build.sh TARGET TAG [WHEEL_DIR]
#   TARGET     runtime | loadtest | builder
#   WHEEL_DIR  holds the torch 2.13.0+cpu wheel (default: $TORCH_WHEEL_DIR, else pip's configured find-links)
# --format docker: the OCI format would drop the HEALTHCHECK.
# Environment: TORCH_VERSION (2.13.0+cpu), TORCH_PIP_ARGS (--find-links /wheels), TRAIN_ARGS (more `ranker
# train` options for the default model, e.g. "--steps 20"), PYTHON_IMAGE (localhost/mari-python-base:bookworm).
set -euo pipefail

target=${1:?usage: build.sh TARGET TAG [WHEEL_DIR]}
tag=${2:?usage: build.sh TARGET TAG [WHEEL_DIR]}
wheels=${3:-${TORCH_WHEEL_DIR:-$(pip config get global.find-links 2>/dev/null || true)}}
if [ -z "$wheels" ] || [ ! -d "$wheels" ]; then
    echo "build.sh: no wheel directory (got '${wheels}'): pass one holding torch-2.13.0+cpu as the third argument" >&2
    exit 1
fi

mounts=(-v "$(realpath "$wheels"):/wheels:ro")
# pip's configuration and what it points at (CA bundle, constraints, local indexes), when this machine has them.
for path in /etc/pip.conf /etc/xdg/pip /etc/ssl/certs /opt/pypi /opt/pypi-more /opt/wheels; do
    if [ -e "$path" ]; then mounts+=(-v "$path:$path:ro"); fi
done

cd "$(dirname "$0")/../.."
exec podman build --format docker --target "$target" --tag "$tag" \
    --build-arg PYTHON_IMAGE="${PYTHON_IMAGE:-localhost/mari-python-base:bookworm}" \
    --build-arg TORCH_VERSION="${TORCH_VERSION:-2.13.0+cpu}" \
    --build-arg TORCH_PIP_ARGS="${TORCH_PIP_ARGS:---find-links /wheels}" \
    --build-arg TRAIN_ARGS="${TRAIN_ARGS:-}" \
    "${mounts[@]}" .

#!/usr/bin/env bash
# Makes the Python base image offline (no registry pull): a minimal Debian bookworm root file system
# from the Debian mirror (mmdebstrap) imported into podman. Its python3 is 3.11, as python:3.11-slim-bookworm.
# Usage: base_image.sh [TAG]   (default localhost/mari-python-base:bookworm). Kept when it already exists.
set -euo pipefail

tag=${1:-localhost/mari-python-base:bookworm}
if podman image exists "$tag"; then
    echo "base_image.sh: $tag exists (podman rmi $tag to remake it)"
    exit 0
fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$workdir/base.tar"
# The CMD and PATH a docker "python" image has, so the Dockerfile's stages behave the same on either.
podman import --quiet --change 'CMD ["python3"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$workdir/base.tar" "$tag" >/dev/null
echo "base_image.sh: made $tag ($(podman image inspect --format '{{.Size}}' "$tag") bytes)"

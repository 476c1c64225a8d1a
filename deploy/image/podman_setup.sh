#!/usr/bin/env bash
# Makes this Debian machine able to build and run the image with podman, as root, without a registry:
# podman + runc + mmdebstrap from apt when missing, and the two container settings this host needs
# (runc, because crun refuses hybrid cgroups; no default ulimits, which a nested container may not raise).
# Idempotent: a machine already set up is left as it is.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "podman_setup.sh: needs root (apt-get, /etc/containers); run it as root or via sudo" >&2
    exit 1
fi

missing=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "podman_setup.sh: installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" uidmap fuse-overlayfs netavark aardvark-dns \
        containernetworking-plugins >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -q '^# mari-serve: podman_setup.sh' "$conf" 2>/dev/null; then
    mkdir -p /etc/containers
    if [ -s "$conf" ]; then
        echo "podman_setup.sh: $conf exists and was not written by this script; check that it sets" \
             "runtime = \"runc\" and default_ulimits = [] (left unchanged)" >&2
    else
        cat > "$conf" <<'CONF'
# mari-serve: podman_setup.sh (runc: crun refuses this host's hybrid cgroups; no default ulimits to raise)
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    fi
fi

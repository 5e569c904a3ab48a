#!/usr/bin/env bash
# Build the ragraft image with podman where no image registry can be reached: the
# base image (Debian bookworm with python3.11) is made here with debootstrap from
# Debian's packages and imported into podman, then the Dockerfile is built on it
# (--build-arg BASE_IMAGE=...), its pip steps reaching PyPI over the host's network.
#
#   sudo deploy/podman/build.sh                 # -> localhost/ragraft:0.1.0
#   sudo podman run --rm --runtime runc localhost/ragraft:0.1.0 --help
#
# Needs root, debootstrap, podman and runc (apt-get install debootstrap podman runc).
# On machines whose containers need it, podman runs with --runtime runc, and
# /etc/containers/containers.conf sets default_ulimits = [] (no ulimits of its own).
#
# Settings (environment):
#   IMAGE        the image to build                (localhost/ragraft:<pyproject version>)
#   BASE_IMAGE   the base image to make or reuse   (localhost/ragraft-base:bookworm-python3.11)
#   REBUILD_BASE=1  make the base again even if podman has it
#   MIRROR       the Debian mirror                  (http://deb.debian.org/debian)
#   WHEELS       a directory of wheels pip may install from besides PyPI, mounted into
#                the build: torch==2.13.0+cpu, which requirements.lock pins with the
#                hash of one wheel, comes from there when PyTorch's index is out of
#                reach                              (/opt/wheels, if it exists)
#   TORCH_INDEX_URL  PyTorch's CPU index            (empty when WHEELS is used)
#   CA_BUNDLE    the host's CA bundle, mounted for pip (/etc/ssl/certs/ca-certificates.crt)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -n1)
IMAGE=${IMAGE:-localhost/ragraft:${version}}
BASE_IMAGE=${BASE_IMAGE:-localhost/ragraft-base:bookworm-python3.11}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [[ -z ${WHEELS+set} && -d /opt/wheels ]]; then
  WHEELS=/opt/wheels
fi
WHEELS=${WHEELS:-}
if [[ -z ${TORCH_INDEX_URL+set} ]]; then
  if [[ -n $WHEELS ]]; then TORCH_INDEX_URL=""; else TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu; fi
fi
RUNTIME=(--runtime runc)

say() { printf '>>> %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "build.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }; }

[[ $(id -u) -eq 0 ]] || { echo "build.sh: run it as root (debootstrap needs it)" >&2; exit 1; }
need debootstrap debootstrap
need podman podman
need runc runc

# ------------------------------------------------------------------ the base image
if [[ ${REBUILD_BASE:-0} == 1 ]] || ! podman image exists "$BASE_IMAGE"; then
  rootfs=$(mktemp -d /var/tmp/ragraft-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap bookworm (minbase + python3.11) into $rootfs from $MIRROR"
  # python3.11-venv depends on python3.11-distutils, a virtual package that
  # debootstrap's resolver does not follow to python3-distutils: named here.
  if ! debootstrap --variant=minbase \
      --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
      bookworm "$rootfs" "$MIRROR"; then
    tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2 || true
    exit 1
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  say "importing it as $BASE_IMAGE"
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE"
  rm -rf "$rootfs"
  trap - EXIT
else
  say "reusing the base image $BASE_IMAGE (REBUILD_BASE=1 to make it again)"
fi

# ------------------------------------------------------------------ the image
args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
mounts=()
if [[ -f $CA_BUNDLE ]]; then
  mounts+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
  args+=(--build-arg "CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt")
fi
if [[ -n $WHEELS ]]; then
  mounts+=(--volume "$WHEELS:/opt/wheels:ro")
  args+=(--build-arg "WHEELS=/opt/wheels")
fi
say "building $IMAGE from $root/Dockerfile"
# --format docker: the OCI image format has no HEALTHCHECK, which podman would drop.
podman build "${RUNTIME[@]}" --format docker --network host "${mounts[@]}" "${args[@]}" \
  --tag "$IMAGE" --file "$root/Dockerfile" "$root"

say "checking it: ragraft --help, ragraft version"
if ! podman run --rm "${RUNTIME[@]}" --network none "$IMAGE" --help >/dev/null; then
  echo "build.sh: $IMAGE was built, but a container of it does not start; where podman" \
    "may not set ulimits, put 'default_ulimits = []' under [containers] in" \
    "/etc/containers/containers.conf" >&2
  exit 1
fi
podman run --rm "${RUNTIME[@]}" --network none "$IMAGE" version
say "built $IMAGE"

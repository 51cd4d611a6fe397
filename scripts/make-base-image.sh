#!/usr/bin/env bash
# The local base image for machines without a registry: Debian bookworm (debootstrap minbase from
# the mirror apt already uses) + python3, python3-venv and ca-certificates, imported as
# `FROM scratch` + `ADD rootfs.tar /` with buildah. Skips the work when the image exists with this
# recipe (FORCE=1 rebuilds). Production builds use the Dockerfiles' default bases instead.
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-localhost/hndsr-base:bookworm}
RECIPE="debootstrap minbase bookworm +python3,python3-venv,ca-certificates v1"
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

if [ "${FORCE:-0}" != 1 ] \
  && [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.hndsr.base.recipe"}}' "$BASE_IMAGE" 2>/dev/null)" = "$RECIPE" ]; then
  echo "$BASE_IMAGE is up to date ($RECIPE)"
  exit 0
fi
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] \
    || { echo "error: $tool is missing: run \`bash scripts/install-container-tools.sh\`" >&2; exit 2; }
done
PATH="$PATH:/usr/sbin:/sbin"

# The mirror apt uses (deb822 sources or sources.list), else Debian's CDN.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/hndsr-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm from $mirror ..."
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; echo "error: debootstrap failed (log above)" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
cat >"$work/Dockerfile" <<DOCKERFILE
FROM scratch
ADD rootfs.tar /
LABEL org.hndsr.base.recipe="$RECIPE" org.opencontainers.image.description="Debian bookworm minbase + python3 (scripts/make-base-image.sh)"
ENV LANG=C.UTF-8
CMD ["bash"]
DOCKERFILE
buildah bud --quiet -t "$BASE_IMAGE" -f "$work/Dockerfile" "$work" >/dev/null
echo "built $BASE_IMAGE"

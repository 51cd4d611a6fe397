#!/usr/bin/env bash
# Builds the project's images (docker/<kind>.Dockerfile) and tags them deploy.image_tags.image_ref(kind):
#   bash scripts/build-images.sh [train serve worker]        (`make images`)
# IMAGE_PROFILE=local (default): no registry needed. The local Debian base
#   (scripts/make-base-image.sh) and the CPU torch wheel from TORCH_WHEELS (/opt/wheels), mounted
#   into the build; PyPI for the other dependencies.
# IMAGE_PROFILE=production: the Dockerfiles' own bases (python slim, CUDA runtime) and the CUDA
#   torch wheel index (what CI publishes).
# Builder: buildah (chroot isolation, layer cache) where there is no Docker daemon, else docker.
# NO_CACHE=1 rebuilds every layer. Prints one line per image: seconds and size.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"
kinds=("$@")
[ "${#kinds[@]}" -gt 0 ] || kinds=(train serve worker)
profile=${IMAGE_PROFILE:-local}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
version=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
registry=${HNDSR_IMAGE_REGISTRY:-hndsr}
registry=${registry%/}

if docker info >/dev/null 2>&1 && [ "${BUILDER:-}" != buildah ]; then
  builder=docker
elif command -v buildah >/dev/null 2>&1; then
  builder=buildah
else
  echo "error: neither a Docker daemon nor buildah: run \`bash scripts/install-container-tools.sh\`" >&2
  exit 2
fi

args=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
case "$profile" in
  local)
    [ "$builder" = buildah ] || { echo "error: IMAGE_PROFILE=local builds with buildah (it mounts the torch wheel): run \`bash scripts/install-container-tools.sh\` and BUILDER=buildah" >&2; exit 2; }
    base=${BASE_IMAGE:-localhost/hndsr-base:bookworm}
    buildah inspect --type image "$base" >/dev/null 2>&1 \
      || { echo "error: the local base image $base is missing: run \`bash scripts/make-base-image.sh\`" >&2; exit 2; }
    wheels=${TORCH_WHEELS:-/opt/wheels}
    torch_version=${TORCH_SPEC#torch==}
    compgen -G "$wheels/torch-${torch_version}[+-]*.whl" >/dev/null \
      || { echo "error: no $TORCH_SPEC wheel in $wheels: set TORCH_WHEELS=DIR holding it (or IMAGE_PROFILE=production for the CUDA index)" >&2; exit 2; }
    args+=(--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX_URL=" --build-arg "TORCH_FIND_LINKS=/run/hndsr/wheels"
           -v "$(realpath "$wheels"):/run/hndsr/wheels:ro")
    ;;
  production) ;;
  *) echo "error: IMAGE_PROFILE must be local or production, not $profile" >&2; exit 2 ;;
esac
# An egress proxy's CA bundle (PIP_CERT on the host) reaches pip inside the build the same way.
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ] && [ "$builder" = buildah ]; then
  args+=(-v "$(realpath "$PIP_CERT"):/run/hndsr/pip-cert.crt:ro" --build-arg "PIP_CERT=/run/hndsr/pip-cert.crt")
fi
[ "${NO_CACHE:-0}" != 1 ] || args+=(--no-cache)

for kind in "${kinds[@]}"; do
  case "$kind" in train|serve|worker) ;; *) echo "error: unknown image $kind: use train, serve, worker" >&2; exit 2 ;; esac
  ref="$registry/hndsr-$kind:$version"
  start=$(date +%s%N)
  if [ "$builder" = buildah ]; then
    BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot} buildah bud --layers --quiet "${args[@]}" \
      --ignorefile "docker/$kind.Dockerfile.dockerignore" \
      --label "org.opencontainers.image.version=$version" \
      -f "docker/$kind.Dockerfile" -t "$ref" . >/dev/null
    size=$(podman image inspect --format '{{.Size}}' "$ref" 2>/dev/null || echo "?")
  else
    docker build "${args[@]}" --label "org.opencontainers.image.version=$version" \
      -f "docker/$kind.Dockerfile" -t "$ref" . >/dev/null
    size=$(docker image inspect --format '{{.Size}}' "$ref")
  fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s\t%s\t%d.%01d s\t%s bytes\n' "$kind" "$ref" $((ms / 1000)) $((ms % 1000 / 100)) "$size"
done

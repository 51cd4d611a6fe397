#!/usr/bin/env bash
# Render an overlay with the project's images retagged: render.sh OVERLAY REGISTRY TAG > out.yaml
# (CI deploys commit-sha tags this way; the committed manifests keep the package-version tags).
set -euo pipefail
overlay=$(cd "$1" && pwd); registry=${2%/}; tag=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "$here/.render.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The image fields of custom resources (InferenceService, ServingRuntime, PyTorchJob ...), from every
# kustomizeconfig.yaml under manifests/.
{ echo "images:"; find "$here" -name kustomizeconfig.yaml -not -path "*/.render.*" -exec grep -hv -e '^images:' -e '^#' {} +; } \
  > "$work/kustomizeconfig.yaml"
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$overlay" "$work")]"
  echo "configurations: [kustomizeconfig.yaml]"
  echo "images:"
  for kind in train serve worker; do
    echo "  - {name: hndsr/hndsr-$kind, newName: $registry/hndsr-$kind, newTag: \"$tag\"}"
  done
} > "$work/kustomization.yaml"
kubectl kustomize "$work"

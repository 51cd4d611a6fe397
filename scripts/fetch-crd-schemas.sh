#!/usr/bin/env bash
# The CustomResourceDefinitions the manifest tests validate against (tests/manifests/kube_render.py),
# from the pinned releases' own artifacts: KServe's kserve.yaml and the Prometheus Operator's
# bundle.yaml (both carry the full CRDs with their OpenAPI v3 schemas). Each CRD is written unchanged
# to DEST/<project>/<group>_<plural>.yaml, the layout of ../shared/schemas.
# Nothing to do when the schemas are already there: in HNDSR_CRD_SCHEMAS when it is set, else in
# .crd-schemas or ../shared/schemas (the tests read the same places, in that order).
set -euo pipefail
cd "$(dirname "$0")/.."
KSERVE_VERSION="${KSERVE_VERSION:-v0.21.0}"  # the KServe the serving image runs (kserve 0.21.0)
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.93.0}"  # the CRDs of ../shared/schemas (0.93.0)
DEST="${HNDSR_CRD_SCHEMAS:-.crd-schemas}"
NEEDED=(
  kserve/serving.kserve.io_inferenceservices.yaml
  kserve/serving.kserve.io_servingruntimes.yaml
  kserve/serving.kserve.io_clusterservingruntimes.yaml
  prometheus-operator/monitoring.coreos.com_prometheusrules.yaml
  prometheus-operator/monitoring.coreos.com_podmonitors.yaml
  prometheus-operator/monitoring.coreos.com_servicemonitors.yaml
  prometheus-operator/monitoring.coreos.com_alertmanagerconfigs.yaml
)
complete() {
  local f
  for f in "${NEEDED[@]}"; do [ -s "$1/$f" ] || return 1; done
}
places=("$DEST")
[ -n "${HNDSR_CRD_SCHEMAS:-}" ] || places+=(../shared/schemas)
for dir in "${places[@]}"; do
  if complete "$dir"; then
    echo "CRD schemas: $dir"
    exit 0
  fi
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
base="${CRD_RELEASE_BASE:-https://github.com}"  # a mirror (or file:// in the tests)
curl -fsSL --retry 3 -o "$tmp/kserve.yaml" \
  "$base/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
curl -fsSL --retry 3 -o "$tmp/bundle.yaml" \
  "$base/prometheus-operator/prometheus-operator/releases/download/$PROMETHEUS_OPERATOR_VERSION/bundle.yaml"
python3 - "$tmp" "$DEST" "${NEEDED[@]}" <<'PY'
"""Split the release manifests into one file per CRD (text unchanged), keep the ones the tests use."""
import re
import sys
from pathlib import Path

tmp, dest, needed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
found = {}
for source, project in (("kserve.yaml", "kserve"), ("bundle.yaml", "prometheus-operator")):
    for doc in re.split(r"(?m)^---[ \t]*$", (tmp / source).read_text()):
        if not re.search(r"(?m)^kind:\s*CustomResourceDefinition\s*$", doc):
            continue
        name = re.search(r"(?m)^  name:\s*(\S+)\s*$", doc)
        assert name, f"a CRD without metadata.name in {source}"
        plural, group = name.group(1).split(".", 1)
        found[f"{project}/{group}_{plural}.yaml"] = "---\n" + doc.strip("\n") + "\n"
absent = [f for f in needed if f not in found]
if absent:
    sys.exit(f"error: the pinned releases do not hold {absent}")
for f in needed:
    (dest / f).parent.mkdir(parents=True, exist_ok=True)
    (dest / f).write_text(found[f])
print(f"CRD schemas: {dest} ({len(needed)} CRDs)")
PY

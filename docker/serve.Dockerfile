# syntax=docker/dockerfile:1.7
# Predictor and transformer: `hndsr serve predictor|transformer` (KServe model servers).
# Build all three images from the repository root with `make images` (scripts/build-images.sh);
# tag: deploy.image_tags.image_ref("serve").
# Production: torch comes as the CUDA 12.8 wheel (it bundles the CUDA runtime; the node's driver
# comes with the NVIDIA container runtime), so a slim Python base is enough; CPU nodes run it
# unchanged. Without a registry, the build args swap in the local Debian base and the CPU wheel:
#   BASE_IMAGE=localhost/hndsr-base:bookworm TORCH_INDEX_URL= TORCH_FIND_LINKS=/opt/wheels
# Layers: system deps -> torch -> dependencies (from pyproject.toml alone) -> code, so a code-only
# change rebuilds only the last small layers. The deps stage is the same in serve and worker.

ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
RUN python3 -m venv /opt/hndsr 2>/dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --clear /opt/hndsr; }
ENV PATH=/opt/hndsr/bin:$PATH
RUN pip install --no-compile ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
COPY pyproject.toml /src/
COPY docker/requirements.py /src/docker/
RUN python3 /src/docker/requirements.py serve > /src/requirements.txt \
    && pip install --no-compile -r /src/requirements.txt

FROM deps AS code
COPY pyproject.toml README.md /src/
COPY hndsr /src/hndsr
COPY serving /src/serving
COPY data_validation /src/data_validation
COPY monitoring /src/monitoring
COPY components /src/components
COPY pipelines /src/pipelines
COPY lake /src/lake
COPY deploy /src/deploy
COPY hndsr_cli /src/hndsr_cli
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# The final stage continues the deps stage (nothing is compiled there: no toolchain to leave behind),
# so its environment is shared, not copied: a code-only change rebuilds the last layers only.
FROM deps
RUN groupadd --system --gid 10001 hndsr && useradd --system --uid 10001 --gid hndsr --no-create-home hndsr \
    && rm -rf /src
COPY --from=code /wheels /tmp/wheels
RUN /opt/hndsr/bin/pip install --no-deps --no-compile --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV PATH=/opt/hndsr/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["hndsr"]
CMD ["serve", "predictor", "--http-port", "8080", "--storage-uri", "/mnt/models"]

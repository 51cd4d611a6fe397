# syntax=docker/dockerfile:1.7
# Training / pipeline image: the KFP components' base_image, torchrun training on GPUs, and the
# jobs that need the data and monitoring extras (drift CronJob, lake-init).
# Build all three images from the repository root with `make images` (scripts/build-images.sh);
# tag: deploy.image_tags.image_ref("train").
# Production: CUDA runtime base (cuDNN, NCCL for multi-GPU training; nothing is compiled, so not
# the devel image) and the CUDA 12.8 torch wheel. Without a registry, the build args swap in the
# local Debian base and the CPU wheel:
#   BASE_IMAGE=localhost/hndsr-base:bookworm TORCH_INDEX_URL= TORCH_FIND_LINKS=/opt/wheels
# Layers: system deps -> torch -> dependencies (from pyproject.toml alone) -> code, so a code-only
# change rebuilds only the last small layers.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

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
RUN python3 /src/docker/requirements.py pipeline data monitor > /src/requirements.txt \
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
# so its 2 GB environment is shared, not copied: a code-only change rebuilds the last layers only.
FROM deps
RUN groupadd --system --gid 10001 hndsr && useradd --system --uid 10001 --gid hndsr --no-create-home hndsr \
    && rm -rf /src
COPY params.yaml /opt/hndsr/params.yaml
COPY --from=code /wheels /tmp/wheels
RUN /opt/hndsr/bin/pip install --no-deps --no-compile --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV PATH=/opt/hndsr/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /opt/hndsr
USER 10001:10001
ENTRYPOINT ["hndsr"]
CMD ["--help"]

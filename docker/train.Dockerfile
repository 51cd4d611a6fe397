# syntax=docker/dockerfile:1.7
# Training / pipeline image: the KFP components' base_image, torchrun training on GPUs, and the
# jobs that need the data and monitoring extras (drift CronJob, lake-init).
# Build from the repository root: docker build -f docker/train.Dockerfile .
# CUDA runtime base (cuDNN, NCCL for multi-GPU training); the devel image is not needed: nothing
# is compiled.

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/hndsr
ENV PATH=/opt/hndsr/bin:$PATH
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
COPY pyproject.toml README.md params.yaml /src/
COPY hndsr /src/hndsr
COPY serving /src/serving
COPY data_validation /src/data_validation
COPY monitoring /src/monitoring
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install "/src[pipeline,data,monitor]" && find /opt/hndsr -name __pycache__ -prune -exec rm -rf {} +

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hndsr && useradd --system --uid 10001 --gid hndsr --no-create-home hndsr
COPY --from=build /opt/hndsr /opt/hndsr
COPY --from=build /src/params.yaml /opt/hndsr/params.yaml
ENV PATH=/opt/hndsr/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /opt/hndsr
USER 10001:10001
ENTRYPOINT ["hndsr"]
CMD ["--help"]

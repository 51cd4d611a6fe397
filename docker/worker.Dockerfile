# syntax=docker/dockerfile:1.7
# Async large-image worker: `hndsr serve worker` (jobs from Redis, results to S3).
# Build from the repository root: docker build -f docker/worker.Dockerfile .
# Same stack as the serving image (CUDA torch wheel on slim Python); its own image so that the
# worker can be rolled out and scaled apart from the InferenceService.

FROM python:3.11.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hndsr
ENV PATH=/opt/hndsr/bin:$PATH
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
COPY pyproject.toml README.md /src/
COPY hndsr /src/hndsr
COPY serving /src/serving
COPY data_validation /src/data_validation
COPY monitoring /src/monitoring
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install "/src[serve]" && find /opt/hndsr -name __pycache__ -prune -exec rm -rf {} +

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 hndsr && useradd --system --uid 10001 --gid hndsr --no-create-home hndsr
COPY --from=build /opt/hndsr /opt/hndsr
ENV PATH=/opt/hndsr/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
ENTRYPOINT ["hndsr"]
CMD ["serve", "worker"]

# syntax=docker/dockerfile:1.7
# Predictor and transformer: `hndsr serve predictor|transformer` (KServe model servers).
# Build from the repository root: docker build -f docker/serve.Dockerfile -t "$(python -c
# 'from hndsr.images import image_ref; print(image_ref("serve"))')" .
# torch comes as the CUDA 12.8 wheel (it bundles the CUDA runtime; the node's driver comes with
# the NVIDIA container runtime), so a slim Python base is enough; CPU nodes run it unchanged.

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
EXPOSE 8080
ENTRYPOINT ["hndsr"]
CMD ["serve", "predictor", "--http-port", "8080", "--storage-uri", "/mnt/models"]

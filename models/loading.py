"""A BiEncoder from a saved folder or a Hub id, read the way evaluation and the data-pipeline scripts read it."""
from __future__ import annotations

import os

from models.bi_encoder import BiEncoder
from models.checks import check_max_lengths, find_model
from models.st_folder import SETTINGS_FILE


def load_bi_encoder(name_or_path: str, **overrides) -> BiEncoder:
    """A BiEncoder from a local folder or a Hub id (downloaded first, so its sentence-transformers files are read).

    `overrides` are EncoderSettings fields (None = keep the saved value). A plain sentence-transformers folder
    (no `embedding_config.json`) truncates every input at one `max_seq_length`, so unless `query_max_len` is
    given its queries get the passage length — the way sentence-transformers itself would encode them.
    ValueError in one line for a path or Hub id that cannot be found, an incomplete folder (models/checks.py), or a
    max length the backbone cannot encode.
    """
    path = find_model(str(name_or_path))
    model = BiEncoder.from_pretrained(path, **overrides)
    if overrides.get("query_max_len") is None and not os.path.isfile(os.path.join(path, SETTINGS_FILE)):
        model.settings.query_max_len = model.settings.passage_max_len
    s = model.settings
    check_max_lengths(model.backbone.config, query_max_len=s.query_max_len, passage_max_len=s.passage_max_len)
    return model

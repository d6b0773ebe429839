"""The word tokenizer's rule, without torch: shared by word-vector training
(:mod:`headstart.training.wordvec`) and the light ONNX predictor (:mod:`headstart.deploy.runtime`), so an
exported word-vector model splits text exactly as it did in training."""

from __future__ import annotations

import re

# Penn-Treebank-like rules, as GloVe and word2vec corpora were tokenised: punctuation apart,
# "don't" -> "do n't", "it's" -> "it 's".
TOKEN = re.compile(r"[^\W\d_]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|[^\w\s]", re.IGNORECASE)

PAD, UNK = 0, 1


def word_ids(text: str, index: dict[str, int], lowercase: bool, max_length: int | None) -> list[int]:
    """Ids of the words of ``text``: ``index[word]`` (rows + 2), 1 for unknown words, ``[1]``
    for a text without words; cut to ``max_length``."""
    ids = [index.get(t, UNK) for t in TOKEN.findall(text.lower() if lowercase else text)] or [UNK]
    return ids[:max_length] if max_length else ids

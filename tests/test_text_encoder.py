"""The real MiniLM encoder (bundled, offline) and GloVe word features from a tiny file."""

import numpy as np
import pytest

from cu_scale.method.text_encoder import GloveWordEncoder, QueryEncoder, tokenize_words

QUERIES = ["a person opens the door.", "someone closes a book", "person eating", "a person opens a door"]


@pytest.fixture(scope="module")
def encoder():
    return QueryEncoder(max_tokens=12)


def test_offline_bundled_model_matches_sentence_transformers(encoder, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = encoder.encode_sentences(QUERIES)
    reference = SentenceTransformer(str(encoder.model_path), device="cpu").encode(QUERIES, normalize_embeddings=True)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose((ours * reference).sum(1), 1.0, atol=1e-4)
    similarity = ours @ ours.T
    assert similarity[0, 3] > similarity[0, 1] and similarity[0, 3] > similarity[0, 2]


def test_word_features_and_masks(encoder):
    features, mask = encoder.encode_words(QUERIES + ["word " * 40])
    assert features.shape == (5, 12, 384) and mask.shape == (5, 12)
    # [CLS] a person opens the door . [SEP] = 8 tokens; the long query is truncated to max_tokens.
    assert mask[0].sum() == 8 and mask[2].sum() == 4 and mask[4].all()
    assert not mask[0, 8:].any() and mask[0, :8].all()
    # The encode stage sorts by these counts: they are the valid lengths `encode` returns.
    np.testing.assert_array_equal(encoder.token_counts(QUERIES + ["word " * 40]), [8, 6, 4, 7, 12])
    np.testing.assert_array_equal(encoder.encode(QUERIES)[2], encoder.token_counts(QUERIES))


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a Hugging Face model directory"):
        QueryEncoder(tmp_path)


def test_glove_text_format(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 0.1 0.2 0.3\nperson 1 0 0\nopens 0 1 0\ndoor 0 0 1\n. 0.5 0.5 0.5\n")
    glove = GloveWordEncoder(path, max_words=6)
    features, mask = glove.encode_words(["The person opens the door.", "person unknownword"])
    assert glove.dim == 3 and features.shape == (2, 6, 3)
    assert tokenize_words("The person opens the door.") == ["the", "person", "opens", "the", "door", "."]
    np.testing.assert_allclose(features[0, :6], [[0.1, 0.2, 0.3], [1, 0, 0], [0, 1, 0], [0.1, 0.2, 0.3], [0, 0, 1], [0.5, 0.5, 0.5]])
    assert mask[1].tolist() == [True, True, False, False, False, False]
    assert not features[1, 1].any()  # out of vocabulary: zeros, kept in the mask
    limited = GloveWordEncoder(path, vocabulary={"door"})
    assert set(limited.vectors) == {"door"}


def test_glove_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 0.1 0.2 0.3\nperson 1 0\n")
    with pytest.raises(ValueError, match=f"{path}:2: 2 values, the first line had 3"):
        GloveWordEncoder(path)
    path.write_text("the 0.1 0.2 0.3\nperson 1 x 0\n")
    with pytest.raises(ValueError, match=f"{path}:2: the vector of 'person'"):
        GloveWordEncoder(path)

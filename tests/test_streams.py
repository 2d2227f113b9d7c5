"""The data path every stage reads: word features written once by the encode stage, training streams of
whole batches built by Ray Data from windows of the store, inference batches read shard by shard.
A real demo store of several shards, the real encoder, faiss, a real local Ray."""

import dataclasses
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from cu_scale.cli import main
from cu_scale.stages.clustering import clusters_dir, read_assignments, trainable_counts
from cu_scale.config import ConfigError, EncodeConfig, load_config
from cu_scale.stages.encode import WORDS_DIR, check_encoder, read_words
from cu_scale.data.store import FeatureStore
from cu_scale.stages.streams import (
    KEY_BITS,
    STREAM_BASE_BLOCKS,
    STREAM_BLOCK_BYTES,
    STREAM_BLOCKS_PER_WORKER,
    StoreLayout,
    explicit_plan,
    explicit_stream,
    implicit_plan,
    implicit_stream,
    inference_dataset,
    labelled_counts,
    window_shards,
)
from cu_scale.method.text_encoder import QueryEncoder


@pytest.fixture(scope="module")
def store(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("streams")
    assert main(["prepare", "demo", "--out", str(root / "store"), "--videos", "120", "--shard-videos", "24", "--steps", "16", "--quiet"]) == 0
    config = root / "run.yaml"
    config.write_text(f"store: {root / 'store'}\ncluster: {{k: 8, memberships: 2}}\nbatches: {{batch_size: 16, clusters_per_batch: 4}}\n")
    assert main(["encode", str(config), "--quiet"]) == 0 and main(["cluster", str(config)]) == 0
    config = load_config(config)
    store = FeatureStore(config.store)
    return store, config, StoreLayout.of(store, check_encoder(store, config.encode))


def _rows(dataset) -> list[dict]:
    return list(dataset.iter_rows())


def test_word_features_are_the_encoders_token_states_stored_once_per_sample(store):
    store, config, layout = store
    assert len(store.shards) == 5
    encoder = QueryEncoder(max_tokens=config.encode.max_tokens)
    for shard in store.shards[:2]:
        samples = store.shard_samples(shard["index"], ["sample_id", "query"])
        words, lengths = read_words(store.path, shard["samples_file"], layout.word_dim, samples.column("sample_id"))
        queries = samples.column("query").to_pylist()
        fixed, mask = encoder.encode_words(queries)
        assert lengths.tolist() == mask.sum(1).tolist() and len(words) == len(queries)
        for stored, states, n in zip(words, fixed, lengths):
            assert stored.dtype == np.float16 and stored.shape == (n, 384)
            np.testing.assert_allclose(stored.astype(np.float32), states[:n], atol=2e-2)
        # The sentence embedding is the masked mean of the same states (what clustering reads).
        embeddings = pq.read_table(store.path / "embeddings" / pathlib_name(shard)).column("embedding").to_pylist()
        for stored, embedding in zip(words, embeddings):
            mean = stored.astype(np.float32).mean(0)
            assert np.dot(mean / np.linalg.norm(mean), embedding) > 0.9999


def pathlib_name(shard: dict) -> str:
    return shard["samples_file"].split("/")[-1]


def test_a_config_naming_another_encoder_is_refused_with_the_field(store, tmp_path):
    store, config, _ = store
    with pytest.raises(ConfigError, match="encode.model: the store .* was encoded with .*minilm.*the config names"):
        check_encoder(store, EncodeConfig(model=str(tmp_path)))
    with pytest.raises(ConfigError, match="encode.max_tokens: .*encoded with max_tokens 32, the config says 16"):
        check_encoder(store, EncodeConfig(max_tokens=16))
    # Encoding again with another model is refused too, before anything is overwritten.
    other = tmp_path / "other.yaml"
    other.write_text(f"store: {store.path}\nencode: {{model: {tmp_path}}}\n")
    assert main(["encode", str(other), "--quiet"]) == 2
    assert (store.path / WORDS_DIR / pathlib_name(store.shards[0])).exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_implicit_stream_is_whole_batches_of_n_clusters_that_cover_the_epoch(store, workers):
    store, config, layout = store
    counts = trainable_counts(store, config.cluster)
    per_worker = config.batches.per_worker(workers)
    train = store.manifest["counts"]["splits"]["train"]["samples"]
    assert counts.sum() == train  # every demo training sample has a single-frame label
    plans = [implicit_plan(counts, per_worker, workers, 2, epoch) for epoch in range(2)]
    assert plans[0].windows != plans[1].windows  # the shard order is drawn again every epoch
    with_train = sum(1 for shard in store.shards if shard["splits"].get("train"))
    assert all(len(w) <= 2 for w in plans[0].windows) and sorted(s for w in plans[0].windows for s in w) == list(range(with_train))
    memberships = config.cluster.memberships
    for plan in plans:
        rows = _rows(implicit_stream(layout, str(clusters_dir(store, config.cluster)), memberships, per_worker, plan))
        assert len(rows) == sum(plan.batches) == plan.steps * workers and len(rows) % workers == 0
        keys = []
        for row in rows:
            assert row["features"].shape == (per_worker.batch_size, 16, store.feature_dim) and row["words"].shape == (per_worker.batch_size, 32, 384)
            groups = row["clusters"][:, 0].reshape(per_worker.clusters_per_batch, -1)
            assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == per_worker.clusters_per_batch
            assert (0 <= row["anchor"]).all() and (row["anchor"] <= 1).all()
            keys += row["sample_key"].tolist()
        assert len(set(keys)) == train, "every training sample at least once per epoch"

    # A row is what the store holds for its samples: features of its video, its own clusters.
    row = rows[0]
    shard, position = int(row["sample_key"][0]) >> KEY_BITS, int(row["sample_key"][0]) & (2**KEY_BITS - 1)
    sample_id = store.shard_samples(shard, ["sample_id"]).column("sample_id")[position].as_py()
    example = store.examples([sample_id])
    steps = int(example["mask"][0].sum())
    np.testing.assert_array_equal(row["features"][0][:steps], example["features"][0][:steps])
    assert row["mask"][0].sum() == steps
    ids, clusters = read_assignments(store, config.cluster, shard)
    assert row["clusters"][0].tolist() == clusters[ids.index(sample_id)].tolist()


def test_a_group_of_one_iterates_a_short_epoch_itself_and_splits_a_long_one(store):
    import ray

    from cu_scale.stages.training import DIRECT_STEPS, split_stream

    store, config, layout = store
    counts = trainable_counts(store, config.cluster)
    per_worker = config.batches.per_worker(1)
    plan = implicit_plan(counts, per_worker, 1, 2, 0)

    def make():
        return implicit_stream(layout, str(clusters_dir(store, config.cluster)), config.cluster.memberships, per_worker, plan)

    direct, split = split_stream(make, 0, 1, steps=DIRECT_STEPS - 1), split_stream(make, 0, 1, steps=DIRECT_STEPS)
    assert isinstance(direct, ray.data.Dataset) and isinstance(split, ray.data.DataIterator)
    keys = [sorted(k for row in rows.iter_rows() for k in row["sample_key"].tolist()) for rows in (direct, split)]
    assert len(keys[0]) == plan.steps * per_worker.batch_size and keys[0] == keys[1]


def test_the_explicit_stream_covers_every_labelled_sample_in_batches_of_b_over_w(store):
    store, config, layout = store
    labelled = labelled_counts(store, "gt")
    assert labelled.sum() == store.manifest["counts"]["splits"]["train"]["samples"]
    plan = explicit_plan(labelled, 8, 2, window_shards(labelled, config.batches, config.cluster.k), seed=0, epoch=0)
    dataset = explicit_stream(layout, "gt", None, 8, 0, plan, attend_to_partial=True)
    # A stream's object-store budget is a few blocks per task and per worker, whatever the corpus: the
    # pages a worker reads its batches from count in its resident memory.
    budget = STREAM_BLOCK_BYTES * (STREAM_BASE_BLOCKS + 2 * STREAM_BLOCKS_PER_WORKER)
    assert dataset.context.execution_options.resource_limits.object_store_memory == budget
    rows = _rows(dataset)
    assert len(rows) == sum(plan.batches) and len(rows) % 2 == 0
    assert all(row["target_start"].shape == (8,) and (row["target_start"] <= row["target_end"]).all() for row in rows)
    assert len({k for row in rows for k in row["sample_key"].tolist()}) == labelled.sum()


def test_on_pseudo_labels_the_explicit_stream_regresses_onto_them_and_holds_attention_to_the_partial_label(store, tmp_path):
    store, config, layout = store
    # Pseudo-labels written as the pseudo-label stage writes them (one Parquet file per shard): here the
    # ground truth, so that target, partial label and ground truth can be told apart by sample.
    truth, durations = {}, {}
    for (videos, _), shard in zip(store.iter_shards(), store.shards):
        durations.update(zip(videos.column("video_id").to_pylist(), videos.column("duration").to_pylist()))
        samples = store.shard_samples(shard["index"], ["sample_id", "video_id", "partial_start", "partial_end", "gt_start", "gt_end"])
        pq.write_table(samples.select(["sample_id", "gt_start", "gt_end"]).rename_columns(["sample_id", "pseudo_start", "pseudo_end"]), tmp_path / pathlib.Path(shard["samples_file"]).name)
        for row, sample in enumerate(samples.to_pylist()):
            truth[(shard["index"] << KEY_BITS) | row] = sample
    labelled = labelled_counts(store, "pseudo")
    plan = explicit_plan(labelled, 8, 1, window_shards(labelled, config.batches, config.cluster.k), seed=0, epoch=0)
    for attend_to_partial, inside in ((True, "partial"), (False, "gt")):
        rows = _rows(explicit_stream(layout, "pseudo", str(tmp_path), 8, 0, plan, attend_to_partial))
        for row in rows[:3]:
            for i, key in enumerate(row["sample_key"].tolist()):
                sample = truth[key]
                duration = durations[sample["video_id"]]
                assert row["target_start"][i] == pytest.approx(min(sample["gt_start"] / duration, 1), abs=1e-6)
                assert row["inside_start"][i] == pytest.approx(min(sample[f"{inside}_start"] / duration, 1), abs=1e-6)
                assert row["inside_end"][i] == pytest.approx(min(sample[f"{inside}_end"] / duration, 1), abs=1e-6)


def test_inference_batches_are_one_row_per_sample_of_the_split(store):
    store, config, layout = store
    rows = _rows(inference_dataset(layout, "test"))
    test = store.samples_table(split="test", columns=["sample_id"]).column("sample_id").to_pylist()
    assert sorted(r["sample_id"] for r in rows) == sorted(test)
    row = rows[0]
    example = store.examples([row["sample_id"]])
    np.testing.assert_array_equal(row["features"], example["features"][0])
    assert row["words_valid"].sum() >= 3 and row["words"].shape == (32, 384)
    validation = {"fraction": 0.5, "seed": 0}
    picked = _rows(inference_dataset(layout, "train", partial_only=True, validation=validation))
    assert 0 < len(picked) < store.manifest["counts"]["splits"]["train"]["samples"]
    assert all(not np.isnan(r["gt_start"]) for r in picked)
    assert dataclasses.replace(layout).shards == layout.shards


def test_a_training_worker_leaves_the_window_tasks_cpus_out_of_its_torch_threads(local_ray):
    from cu_scale.stages.resources import READ_TASK_CPUS, training_group
    from cu_scale.stages.streams import WINDOW_TASKS

    cpus = local_ray.cluster_resources()["CPU"]
    assert cpus == 2 and WINDOW_TASKS * READ_TASK_CPUS == 1.0
    (one_cpus, one_threads, _), (two_cpus, two_threads, _) = training_group(1), training_group(2)
    assert (one_cpus, one_threads) == (1.0, 1)  # not 2: a reader would stall both OpenMP threads
    assert (two_cpus, two_threads) == (0.75, 1)  # the readers' CPU stays free of reservations too

"""The `encode` stage: every query of the store through the text encoder once, for every later stage.

One forward pass per query gives both things the method needs from the text (`QueryEncoder.encode`):
- its sentence embedding, for clustering: ``STORE/embeddings/part-NNNNN.parquet`` (sample_id, embedding);
- its word features, for the models: ``STORE/words/part-NNNNN.parquet`` (sample_id, num_tokens, words),
  the encoder's token states at the query's valid length, float16, one binary value per sample
  (num_tokens × D, little-endian, row-major; the same layout as the store's video features). The
  embedding is the masked mean of exactly these states (before they are rounded to float16).
Both are co-partitioned with the store: file k holds the samples of ``samples/part-k`` in the same order,
so a reader of one shard joins them by position (`read_words` checks the ids).

Ray Data runs a pool of encoder actors (one model each, on a GPU when Ray has one); each task is one
store shard: the actor reads that shard's queries, encodes each *distinct* query of the shard once
(Charades-STA repeats many of its sentences), and writes both files through a temporary file and a
rename. A shard whose two files exist with the right row count is skipped, so an interrupted run
resumes where it stopped. ``STORE/embeddings/meta.json`` records the model and `max_tokens`; outputs of two
encoders are never mixed, and a stage whose config names another encoder is refused (`check_encoder`).
Word features are what every training and inference stage reads: none of them runs the text encoder
on the store's queries again (`cu-scale predict` does, for its one new query).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cu_scale.config import ConfigError, EncodeConfig
from cu_scale.data.store import FeatureStore, StoreError, read_shard
from cu_scale.storage import Location, locate, read_table, write_table

EMBEDDINGS_DIR = "embeddings"
WORDS_DIR = "words"
META_FILE = "meta.json"  # in EMBEDDINGS_DIR: the model, max_tokens and dim of both outputs


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


WORDS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("words", pa.large_binary(), nullable=False),  # num_tokens × D float16, little-endian, row-major
    ]
)


class ShardEncoder:
    """A Ray Data actor: holds one `QueryEncoder`, encodes whole shards and writes both of their files."""

    def __init__(self, store_path: str, model: str | None, device: str, batch_size: int, max_tokens: int, threads: int):
        import torch

        from cu_scale.stages.monitoring import ENCODED_QUERIES, Progress
        from cu_scale.method.text_encoder import QueryEncoder

        torch.set_num_threads(threads)  # Ray starts actors with one thread unless told otherwise
        self.encoder = QueryEncoder(model, device=device, max_tokens=max_tokens)
        self.store_path, self.batch_size = locate(store_path), batch_size
        self.shards = {shard["samples_file"]: shard for shard in FeatureStore(store_path).shards}  # their checksums
        self.progress = Progress(ENCODED_QUERIES, "queries embedded by the encode stage", store=self.store_path.name)

    def __call__(self, batch: dict) -> dict:
        counts = []
        for samples_file in batch["samples_file"]:
            samples = read_shard(self.store_path, self.shards[samples_file], "samples", ["sample_id", "query"])
            queries, inverse = np.unique(np.asarray(samples.column("query").to_pylist(), dtype=object), return_inverse=True)
            # Batch queries of the same token count together: each batch is padded only to its longest query.
            # (sentence-transformers sorts by characters, which pads about 15% more on Charades-STA.)
            order = np.argsort(self.encoder.token_counts(list(queries)), kind="stable")
            samples_per_query = np.bincount(inverse, minlength=len(queries))
            embeddings = np.zeros((len(queries), self.encoder.dim), np.float32)
            words = np.empty(len(queries), dtype=object)
            lengths = np.zeros(len(queries), np.int32)
            for i in range(0, len(queries), self.batch_size):
                rows = order[i : i + self.batch_size]
                embeddings[rows], states, lengths[rows] = self.encoder.encode([queries[r] for r in rows])
                for row, state, length in zip(rows, states, lengths[rows]):
                    words[row] = np.ascontiguousarray(state[:length], dtype="<f2").tobytes()
                self.progress.add(int(samples_per_query[rows].sum()))
            name = pathlib.PurePosixPath(samples_file).name
            ids = samples.column("sample_id")
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings[inverse].reshape(-1)), self.encoder.dim)
            write_table(pa.Table.from_arrays([ids, vectors], schema=embedding_schema(self.encoder.dim)), self.store_path / EMBEDDINGS_DIR / name)
            tokens = [pa.array(lengths[inverse], pa.int32()), pa.array(list(words[inverse]), pa.large_binary())]
            write_table(pa.Table.from_arrays([ids, *tokens], schema=WORDS_SCHEMA), self.store_path / WORDS_DIR / name)
            counts.append(len(inverse))
        return {"samples_file": np.asarray(batch["samples_file"]), "count": np.asarray(counts)}


def output_files(store: FeatureStore, directory: str) -> list[Location]:
    """The encode stage's files in `directory` (EMBEDDINGS_DIR or WORDS_DIR), one per store shard."""
    return [store.path / directory / pathlib.PurePosixPath(s["samples_file"]).name for s in store.shards]


def _done(path: Location, rows: int) -> bool:
    if not path.exists():
        return False
    with path.open_input() as handle:
        return pq.read_metadata(handle).num_rows == rows


def resolved_model(config: EncodeConfig) -> str:
    """The encoder a config names, as the meta file records it: an absolute directory."""
    from cu_scale.method.text_encoder import default_model_path

    return str(pathlib.Path(config.model).resolve()) if config.model else str(default_model_path())


def read_meta(store: FeatureStore) -> dict | None:
    path = store.path / EMBEDDINGS_DIR / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_encoder(store: FeatureStore, config: EncodeConfig) -> dict:
    """The encode meta of a store whose queries were all encoded by the encoder `config` names.

    A stage that reads the word features must read those of its own encoder: another model (or another
    `max_tokens`, which truncates differently) would train on features the config did not ask for.
    """
    meta = read_meta(store)
    missing = [p for p in output_files(store, WORDS_DIR) if not p.exists()]
    if meta is None or "max_tokens" not in meta or missing:
        what = missing[0] if missing else store.path / EMBEDDINGS_DIR / META_FILE
        raise StoreError(f"{what} is missing: run `cu-scale encode` first (it writes the word features every later stage reads)")
    model = resolved_model(config)
    if meta["model"] != model:
        raise ConfigError(f"encode.model: the store {store.path} was encoded with {meta['model']}, the config names {model}; rerun the encode stage (cu-scale run --from encode) or set encode.model to match")
    if meta["max_tokens"] != config.max_tokens:
        raise ConfigError(f"encode.max_tokens: the store {store.path} was encoded with max_tokens {meta['max_tokens']}, the config says {config.max_tokens}; rerun the encode stage or set it back")
    return meta


def encode_store(store_path: str | os.PathLike, config: EncodeConfig, progress: bool = True, heartbeat=None) -> dict:
    """Encode every query of the store not encoded yet; returns a summary (model, dim, shards done/skipped)."""
    import ray

    from cu_scale.stages.resources import actor_pool

    store = FeatureStore(store_path)
    model = resolved_model(config)
    meta = read_meta(store)
    if meta is not None and (meta["model"], meta.get("max_tokens")) != (model, config.max_tokens):
        raise ConfigError(
            f"encode.model: {store.path / EMBEDDINGS_DIR} holds the outputs of {meta['model']} (max_tokens {meta.get('max_tokens')});"
            f" remove {store.path / EMBEDDINGS_DIR} and {store.path / WORDS_DIR} to re-encode with {model} (max_tokens {config.max_tokens})"
        )
    (store.path / EMBEDDINGS_DIR / META_FILE).write_text(json.dumps({"model": model, "max_tokens": config.max_tokens}) + "\n")

    todo = [
        shard for shard, embeddings, words in zip(store.shards, output_files(store, EMBEDDINGS_DIR), output_files(store, WORDS_DIR))
        if not (_done(embeddings, shard["num_samples"]) and _done(words, shard["num_samples"]))
    ]
    summary = {"model": model, "shards": len(store.shards), "skipped": len(store.shards) - len(todo), "encoded_samples": 0}
    if todo:
        pool = actor_pool(config.actors, gpu=config.device)
        dataset = ray.data.from_items([{"samples_file": s["samples_file"]} for s in todo], override_num_blocks=len(todo)).map_batches(
            ShardEncoder,
            fn_constructor_kwargs={
                "store_path": store.path.uri, "model": model, "device": pool.device, "batch_size": config.batch_size,
                "max_tokens": config.max_tokens, "threads": pool.threads,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_gpus=pool.gpus_per_actor,
            num_cpus=pool.cpus_per_actor,
        )
        total = sum(shard["num_samples"] for shard in store.shards)
        pending = sum(shard["num_samples"] for shard in todo)
        with tqdm(total=total, initial=total - pending, desc="encode queries", unit="query", disable=not progress) as bar:
            for row in dataset.iter_rows():
                if heartbeat is not None:
                    heartbeat.beat.remote(int(row["count"]))
                bar.update(int(row["count"]))
                summary["encoded_samples"] += int(row["count"])
        summary.update(device=pool.device, actors=pool.actors)
    with output_files(store, EMBEDDINGS_DIR)[0].open_input() as first:
        summary["dim"] = pq.read_schema(first).field("embedding").type.list_size
    (store.path / EMBEDDINGS_DIR / META_FILE).write_text(json.dumps({"model": model, "max_tokens": config.max_tokens, "dim": summary["dim"]}) + "\n")
    return summary


def read_embeddings(store: FeatureStore, shard_index: int) -> tuple[list[str], np.ndarray]:
    """Sample ids and ``(n, D)`` float32 embeddings of one shard."""
    path = output_files(store, EMBEDDINGS_DIR)[shard_index]
    if not path.exists():
        raise StoreError(f"{path} is missing: run `cu-scale encode` first")
    table = read_table(path)
    column = table.column("embedding").combine_chunks()
    return table.column("sample_id").to_pylist(), column.values.to_numpy().reshape(len(table), column.type.list_size)


def read_words(store_path: str | os.PathLike, samples_file: str, dim: int, sample_ids: pa.ChunkedArray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Word features of one shard: per-sample ``(num_tokens, D)`` float16 views and their lengths.

    With `sample_ids` (the shard's samples, in store order) the ids are checked against the file's, so a
    words file that belongs to another version of the shard is an error that names it, not wrong features.
    """
    path = locate(store_path) / WORDS_DIR / pathlib.PurePosixPath(samples_file).name
    if not path.exists():
        raise StoreError(f"{path} is missing: run `cu-scale encode` first")
    table = read_table(path)
    if sample_ids is not None and not table.column("sample_id").equals(sample_ids):
        raise StoreError(f"{path} does not hold the samples of {samples_file} in order: rerun `cu-scale encode` (cu-scale run --from encode)")
    words = [np.frombuffer(value.as_buffer(), dtype="<f2").reshape(-1, dim) for chunk in table.column("words").chunks for value in chunk]
    return words, table.column("num_tokens").to_numpy()

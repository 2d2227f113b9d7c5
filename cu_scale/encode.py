"""The `encode` stage: one sentence embedding per sample, written into the store, keyed by sample id.

Ray Data runs a pool of encoder actors (one model each, on a GPU when Ray has one); each task is one
store shard: the actor reads that shard's samples, embeds the queries and writes
``STORE/embeddings/part-NNNNN.parquet`` (sample_id, embedding) through a temporary file and a rename.
A shard whose file exists with the right row count is skipped, so an interrupted run resumes where it
stopped. ``STORE/embeddings/meta.json`` records the model; embeddings of two models are never mixed.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cu_scale.config import EncodeConfig
from cu_scale.store import SAMPLE_SCHEMA, FeatureStore, StoreError

EMBEDDINGS_DIR = "embeddings"


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


class ShardEncoder:
    """A Ray Data actor: holds one `QueryEncoder`, embeds whole shards and writes them."""

    def __init__(self, store_path: str, model: str | None, device: str, batch_size: int, max_tokens: int, threads: int):
        import torch

        from cu_scale.monitoring import ENCODED_QUERIES, Progress
        from cu_scale.text_encoder import QueryEncoder

        torch.set_num_threads(threads)  # Ray starts actors with one thread unless told otherwise
        self.encoder = QueryEncoder(model, device=device, max_tokens=max_tokens)
        self.store_path, self.batch_size = pathlib.Path(store_path), batch_size
        self.progress = Progress(ENCODED_QUERIES, "queries embedded by the encode stage", store=self.store_path.name)

    def __call__(self, batch: dict) -> dict:
        counts = []
        for samples_file, out_file in zip(batch["samples_file"], batch["out_file"]):
            samples = pq.read_table(self.store_path / samples_file, columns=["sample_id", "query"], schema=SAMPLE_SCHEMA)
            queries = samples.column("query").to_pylist()
            # Batch queries of similar length together (as sentence-transformers does): less padding.
            order = np.argsort([len(q) for q in queries], kind="stable")
            embeddings = np.zeros((len(queries), self.encoder.dim), np.float32)
            for i in range(0, len(queries), self.batch_size):
                rows = order[i : i + self.batch_size]
                embeddings[rows] = self.encoder.encode_sentences([queries[r] for r in rows])
                self.progress.add(len(rows))
            table = pa.Table.from_arrays(
                [samples.column("sample_id"), pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), self.encoder.dim)],
                schema=embedding_schema(self.encoder.dim),
            )
            final = self.store_path / out_file
            partial = final.with_suffix(".partial")
            pq.write_table(table, partial)
            os.replace(partial, final)
            counts.append(len(queries))
        return {"out_file": np.asarray(batch["out_file"]), "count": np.asarray(counts)}


def embedding_files(store: FeatureStore) -> list[pathlib.Path]:
    return [store.path / EMBEDDINGS_DIR / pathlib.Path(s["samples_file"]).name for s in store.shards]


def encode_store(store_path: str | os.PathLike, config: EncodeConfig, progress: bool = True) -> dict:
    """Embed every sample of the store not embedded yet; returns a summary (model, dim, shards done/skipped)."""
    import ray

    from cu_scale.text_encoder import default_model_path

    store = FeatureStore(store_path)
    model = str(pathlib.Path(config.model).resolve()) if config.model else str(default_model_path())
    out_dir = store.path / EMBEDDINGS_DIR
    out_dir.mkdir(exist_ok=True)
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())["model"]
        if previous != model:
            raise StoreError(f"{out_dir} holds embeddings of {previous}; remove it to re-encode with {model}")
    else:
        meta_path.write_text(json.dumps({"model": model}) + "\n")

    todo, todo_indices = [], []
    for index, (shard, out_file) in enumerate(zip(store.shards, embedding_files(store))):
        if out_file.exists() and pq.read_metadata(out_file).num_rows == shard["num_samples"]:
            continue
        todo_indices.append(index)
        todo.append({"samples_file": shard["samples_file"], "out_file": str(out_file.relative_to(store.path))})
    summary = {"model": model, "shards": len(store.shards), "skipped": len(store.shards) - len(todo), "encoded_samples": 0}
    if todo:
        use_gpu = config.device == "cuda" or (config.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
        # Share the CPUs among the actors: each gets its slice as Ray CPUs and as torch threads.
        threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // config.actors)
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ShardEncoder,
            fn_constructor_kwargs={
                "store_path": str(store.path),
                "model": model,
                "device": "cuda" if use_gpu else "cpu",
                "batch_size": config.batch_size,
                "max_tokens": config.max_tokens,
                "threads": threads,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_gpus=1 if use_gpu else 0,
            num_cpus=threads,
        )
        total = sum(shard["num_samples"] for shard in store.shards)
        pending = sum(store.shards[i]["num_samples"] for i in todo_indices)
        with tqdm(total=total, initial=total - pending, desc="encode queries", unit="query", disable=not progress) as bar:
            for row in dataset.iter_rows():
                bar.update(int(row["count"]))
                summary["encoded_samples"] += int(row["count"])
        summary["device"] = "cuda" if use_gpu else "cpu"
    meta = json.loads(meta_path.read_text())
    summary["dim"] = pq.read_schema(embedding_files(store)[0]).field("embedding").type.list_size
    meta_path.write_text(json.dumps({**meta, "dim": summary["dim"]}) + "\n")
    return summary


def read_embeddings(store: FeatureStore, shard_index: int) -> tuple[list[str], np.ndarray]:
    """Sample ids and ``(n, D)`` float32 embeddings of one shard."""
    path = embedding_files(store)[shard_index]
    if not path.exists():
        raise StoreError(f"{path} is missing: run `cu-scale encode` first")
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    return table.column("sample_id").to_pylist(), column.values.to_numpy().reshape(len(table), column.type.list_size)

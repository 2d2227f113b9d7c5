"""Corpora into a feature store: records, annotation readers, partial labels, features, the simulator, the
demo world, the sharded Parquet store and `prepare`. Imports no stage, no model, no Ray."""

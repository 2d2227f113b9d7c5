"""Config loading: validated once, errors name the file and the field."""

import pytest

from cu_scale.config import BatchConfig, ConfigError, load_config


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_the_global_batch_is_shared_by_the_workers():
    assert BatchConfig(batch_size=64, clusters_per_batch=8).per_worker(2) == BatchConfig(batch_size=32, clusters_per_batch=4)
    assert BatchConfig(batch_size=64, clusters_per_batch=8).per_worker(1) == BatchConfig(batch_size=64, clusters_per_batch=8)


def test_defaults_and_overrides(tmp_path):
    config = load_config(_write(tmp_path, "store: s\ncluster: {k: 32}\n"), {"batches.batch_size": 16, "batches.clusters_per_batch": 4})
    assert (config.store, config.cluster.k, config.cluster.memberships) == ("s", 32, 2)
    assert (config.batches.batch_size, config.batches.clusters_per_batch) == (16, 4)


@pytest.mark.parametrize(
    "text,message",
    [
        ("cluster: {k: 4}\n", "store: the path of the feature store is required"),
        ("store: s\ncluster: {kk: 4}\n", "cluster.kk: unknown field (known: k, memberships"),
        ("store: s\ncluster: {k: 1}\n", "cluster.k: must be ≥ 2, got 1"),
        ("store: s\ncluster: {k: four}\n", "cluster.k: expected int, got 'four'"),
        ("store: s\ncluster: {k: true}\n", "cluster.k: expected int, got True"),
        ("store: s\ncluster: {k: 4, memberships: 5}\n", "cluster.memberships: must be ≤ k (4), got 5"),
        ("store: s\nbatches: {batch_size: 30, clusters_per_batch: 4}\n", "batches.batch_size: B=30 is not divisible"),
        ("store: s\nencode: {device: tpu}\n", "encode.device: must be one of"),
        ("store: s\ntraining: {}\n", "training: unknown section"),
        ("store: s\nimplicit: {contrast_features: both}\n", "implicit.contrast_features: must be one of"),
        ("store: s\nimplicit: {lr_schedule: step}\n", "implicit.lr_schedule: must be one of"),
        ("store: s\nimplicit: {epochs: 2, raun_warmup_epochs: 2}\n", "implicit.raun_warmup_epochs: must be below epochs (2)"),
        ("store: s\nbatches: {clusters_per_batch: 8}\nimplicit: {workers: 3}\n", "batches.clusters_per_batch: N=8 clusters of the global batch cannot be split evenly over 3 workers"),
        ("store: s\ncluster: [1, 2]\n", "cluster: expected a mapping"),
        ("store: s\ncluster: {k: 4\n", ":3: not valid YAML"),
        ("store: s\nexplicit: {label_sources: [pseudo, full]}\n", "explicit.label_sources: 'full' is not one of ('pseudo', 'gt', 'partial', 'mixed')"),
        ("store: s\nexplicit: {models: [SpanDETR]}\n", "explicit.models: 'SpanDETR' is not 'package.module:ClassName'"),
        ("store: s\nexplicit: {models: 3}\n", "explicit.models: expected a list of strings, got 3"),
        ("store: s\nprepare: {dataset: charades-sta}\n", "prepare.annotations: the charades-sta annotation directory is required"),
        ("store: s\nprepare: {dataset: demo, partial: clip}\n", "prepare.clip_seconds: partial: clip needs clip_seconds > 0"),
    ],
)
def test_errors_name_file_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_every_shipped_config_loads():
    import pathlib

    shipped = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"demo", "charades-sta-glance", "charades-sta-clip2s", "charades-sta-clip4s", "activitynet-captions"}
    for path in shipped:
        config = load_config(path)
        assert config.prepare is not None and config.store and config.run_dir, path

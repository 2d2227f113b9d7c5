"""Long videos with short moments (the demo's long world): the implicit stage's events must keep the
length of the moments they find. Trained through the real stage (Ray Train + DeepSpeed, a local Ray)."""

from cu_scale.cli import main
from cu_scale.stages.pseudo_labels import pseudo_label_shape


def test_events_on_long_videos_stay_within_a_factor_two_of_the_moments(tmp_path, local_ray):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["prepare", "demo", "--world", "long", "--out", str(store), "--videos", "250", "--steps", "128", "--dv", "256", "--quiet"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"store: {store}\nrun_dir: {run}\ncluster: {{k: 16, memberships: 2}}\nbatches: {{batch_size: 64, clusters_per_batch: 8}}\n"
        # The default scale settings. 8 epochs: the events settle by the fifth (mean event length by epoch,
        # a fraction of the video: 0.40 0.24 0.14 0.08 0.050 0.046 0.048 0.047; median event 11.3 s, moments 10.9 s).
        "implicit: {epochs: 8, hidden_dim: 64}\n"
    )
    for command in (["encode", str(config), "--quiet"], ["cluster", str(config)], ["implicit", str(config), "--quiet"], ["pseudo-label", str(config)]):
        assert main(command) == 0, command
    shape = pseudo_label_shape(run / "pseudo_labels")
    ratio = shape["median_length"] / shape["median_true_length"]
    assert 0.5 <= ratio <= 2.0, f"median event {shape['median_length']:.1f} s against moments of {shape['median_true_length']:.1f} s"

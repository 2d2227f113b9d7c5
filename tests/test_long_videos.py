"""Long videos with short moments (the demo's long world): the implicit stage's events must keep the
length of the moments they find.

The store is prepared, encoded (Ray Data, a local Ray) and clustered (faiss) by the stage commands; the
implicit model is trained by the plain loop of benchmarks/implicit_plain_loop.py: the stage's own batches,
method step and optimiser, without Ray Train, whose start-up and stream would double this test's time
(the stage itself is trained in tests/test_implicit_stage.py and by the shared tiny run).
"""

import importlib.util
import pathlib

import torch

from cu_scale.cli import main
from cu_scale.config import load_config

PLAIN_LOOP = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "implicit_plain_loop.py"


def _plain_loop():
    spec = importlib.util.spec_from_file_location("implicit_plain_loop", PLAIN_LOOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_events_on_long_videos_stay_within_a_factor_two_of_the_moments(tmp_path, local_ray):
    store = tmp_path / "store"
    assert main(["prepare", "demo", "--world", "long", "--out", str(store), "--videos", "250", "--steps", "128", "--dv", "256", "--quiet"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"store: {store}\nrun_dir: {tmp_path / 'run'}\ncluster: {{k: 16, memberships: 2}}\nbatches: {{batch_size: 64, clusters_per_batch: 8}}\n"
        # The default scale settings. 8 epochs: the events settle by the fifth (through the stage, the mean
        # event length by epoch, a fraction of the video: 0.40 0.24 0.14 0.08 0.050 0.046 0.048 0.047).
        "implicit: {epochs: 8, hidden_dim: 64}\n"
    )
    for command in (["encode", str(config), "--quiet"], ["cluster", str(config)]):
        assert main(command) == 0, command
    loop = _plain_loop()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, layout, shards = loop.train(load_config(config), say=print)  # shown when the test fails
        result = loop.score(model, layout, shards)
    finally:
        torch.set_num_threads(threads)
    print(loop.describe(result))
    ratio = result["median_length"] / result["median_true_length"]
    assert 0.5 <= ratio <= 2.0, f"median event {result['median_length']:.1f} s against moments of {result['median_true_length']:.1f} s\n{loop.describe(result)}"

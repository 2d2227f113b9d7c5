"""No stage waits forever: the progress watchdog ends a stalled stage with what Ray has pending."""

import time

import pytest

from cu_scale.stages.watchdog import StageStalled, run_watched


def test_a_stage_that_cannot_be_scheduled_stops_and_says_what_it_waits_for(local_ray):
    ray = local_ray

    @ray.remote(num_cpus=0.5, resources={"no_such_accelerator": 1})
    def read_shard():
        return 1

    started = time.perf_counter()
    with pytest.raises(StageStalled) as stalled:
        run_watched(lambda beat: ray.get(read_shard.remote()), stage="pseudo-label", seconds=4, hint="encode.actors sets the inference actors")
    message = str(stalled.value)
    assert time.perf_counter() - started < 30
    assert "stage pseudo-label made no progress for" in message and "watchdog_seconds" in message
    assert "task read_shard needs {CPU: 0.5, no_such_accelerator: 1}" in message
    assert "free now: CPU" in message and "encode.actors sets the inference actors" in message


def test_progress_keeps_a_slow_stage_alive_and_errors_pass_through(local_ray):
    def slow(beat):
        for _ in range(4):
            time.sleep(1.5)
            beat.beat.remote()
        return "done"

    assert run_watched(slow, stage="encode", seconds=3) == "done"
    with pytest.raises(ValueError, match="bad shard"):
        run_watched(lambda beat: (_ for _ in ()).throw(ValueError("bad shard")), stage="encode", seconds=3)

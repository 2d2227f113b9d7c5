"""The project's own metrics, for the Ray dashboard and Prometheus, and a TensorBoard log of every training.

Ray exports each `ray.util.metrics` metric on every node's metrics endpoint (``ray start
--metrics-export-port``; the Ray dashboard and Prometheus read it there) under a ``ray_`` prefix, and a
counter also as ``<name>_total``:

    ray_cu_scale_train_samples_per_second{stage, run, rank}   training throughput of one worker
    ray_cu_scale_train_loss{stage, run, rank, term}           each loss term, averaged over the last epoch
    ray_cu_scale_train_epoch{stage, run, rank}                epochs finished
    ray_cu_scale_encoded_queries_total{store}                 queries embedded by the encode stage
    ray_cu_scale_clustered_queries_total{store}               queries assigned to clusters
    ray_cu_scale_pseudo_labelled_samples_total{run}           training samples pseudo-labelled

`stage` is ``implicit`` or ``explicit/<Model>-<source>``; `run` and `store` are directory names. The
Grafana dashboard in infra/grafana/ plots them. Rank 0 of every training also writes its epochs (each loss
term, the learning rate, the throughput) to RUN_DIR/tensorboard/<stage>/ for `tensorboard --logdir`.

Metrics need a connected Ray (a driver, a task, an actor or a Ray Train worker); without one they are not
recorded, so the library also runs outside Ray (unit tests, a notebook).
"""

from __future__ import annotations

import os
import tempfile
import time

from cu_scale.storage import locate

TRAIN_SAMPLES_PER_SECOND = "cu_scale_train_samples_per_second"
TRAIN_LOSS = "cu_scale_train_loss"
TRAIN_EPOCH = "cu_scale_train_epoch"
ENCODED_QUERIES = "cu_scale_encoded_queries"
CLUSTERED_QUERIES = "cu_scale_clustered_queries"
PSEUDO_LABELLED_SAMPLES = "cu_scale_pseudo_labelled_samples"


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


class Progress:
    """A counter of work done (queries encoded or clustered, samples pseudo-labelled), with fixed tags."""

    def __init__(self, name: str, description: str, **tags: str):
        self._counter = None
        if _ray_connected():
            from ray.util.metrics import Counter

            self._counter = Counter(name, description, tag_keys=tuple(tags))
            self._counter.set_default_tags(tags)

    def add(self, amount: int) -> None:
        if self._counter is not None and amount > 0:
            self._counter.inc(float(amount))


def training_monitor_settings(run_dir: str, stage: str, heartbeat=None) -> dict:
    """What a training worker needs to build its `TrainingMonitor` (it travels in the loop config; the
    heartbeat is an actor handle, `cu_scale.stages.watchdog`)."""
    run = locate(run_dir)
    return {"stage": stage, "run": run.name, "tensorboard_dir": (run / "tensorboard" / stage).uri, "heartbeat": heartbeat}


class TrainingMonitor:
    """One training worker's throughput and loss terms on Ray's metrics endpoint; rank 0 also logs to TensorBoard.

    `step(samples)` after every optimizer step publishes the throughput at most every `publish_every_s`
    seconds (a gauge per step would cost more than the step on small models); `epoch(...)` publishes the
    epoch's loss terms and returns its overall samples per second.
    """

    def __init__(self, stage: str, run: str, tensorboard_dir: str | None, rank: int, publish_every_s: float = 5.0, heartbeat=None):
        self.rank = rank
        self.heartbeat = heartbeat  # the stage's `cu_scale.stages.watchdog.Heartbeat`, told of progress as often as the gauges
        self.publish_every_s = publish_every_s
        self._gauges = None
        if _ray_connected():
            from ray.util.metrics import Gauge

            tags = {"stage": stage, "run": run, "rank": str(rank)}
            self._gauges = {
                "speed": Gauge(TRAIN_SAMPLES_PER_SECOND, "training samples per second of one worker", tag_keys=tuple(tags)),
                "loss": Gauge(TRAIN_LOSS, "a loss term, averaged over the last epoch", tag_keys=(*tags, "term")),
                "epoch": Gauge(TRAIN_EPOCH, "epochs finished", tag_keys=tuple(tags)),
            }
            for gauge in self._gauges.values():
                gauge.set_default_tags(tags)
        self._writer = None
        self._tensorboard = locate(tensorboard_dir) if rank == 0 and tensorboard_dir else None
        if self._tensorboard is not None:
            from tensorboardX import SummaryWriter

            # tensorboardX writes local files only: in object storage, its events go to a local directory
            # first, copied to the run directory after every epoch (a few kB an epoch).
            self._events = self._tensorboard.path if self._tensorboard.is_local else tempfile.mkdtemp(prefix="cu-scale-tensorboard-")
            self._writer = SummaryWriter(self._events)
        now = time.perf_counter()
        self._epoch_started, self._epoch_samples = now, 0
        self._window_started, self._window_samples = now, 0
        self._last_beat = float("-inf")

    def step(self, samples: int) -> None:
        self._epoch_samples += samples
        self._window_samples += samples
        now = time.perf_counter()
        if now - self._window_started >= self.publish_every_s:
            if self._gauges is not None:
                self._gauges["speed"].set(self._window_samples / (now - self._window_started))
            self._window_started, self._window_samples = now, 0
        self.alive()

    def alive(self) -> None:
        """Tell the stage's watchdog that this worker is making progress (at most every `publish_every_s`)."""
        now = time.perf_counter()
        if self.heartbeat is not None and now - self._last_beat >= self.publish_every_s:
            self.heartbeat.beat.remote()
            self._last_beat = now

    def epoch(self, epoch: int, metrics: dict) -> float:
        """Publish a finished epoch's `loss_*` terms and learning rate; returns the epoch's samples per second."""
        now = time.perf_counter()
        speed = self._epoch_samples / max(now - self._epoch_started, 1e-9)
        losses = {name[len("loss_") :]: float(value) for name, value in metrics.items() if name.startswith("loss_")}
        if self._gauges is not None:
            self._gauges["speed"].set(speed)
            self._gauges["epoch"].set(epoch + 1)
            for term, value in losses.items():
                self._gauges["loss"].set(value, tags={"term": term})
        if self._writer is not None:
            for term, value in losses.items():
                self._writer.add_scalar(f"loss/{term}", value, epoch + 1)
            if "learning_rate" in metrics:
                self._writer.add_scalar("learning_rate", float(metrics["learning_rate"]), epoch + 1)
            self._writer.add_scalar("samples_per_second", speed, epoch + 1)
            self._writer.flush()
            if not self._tensorboard.is_local:
                for name in os.listdir(self._events):
                    with open(os.path.join(self._events, name), "rb") as events:
                        (self._tensorboard / name).write_bytes(events.read())
        self._epoch_started, self._epoch_samples = now, 0
        self._window_started, self._window_samples = now, 0
        return speed

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

"""No stage waits forever: a progress watchdog around every Ray stage.

A Ray stage can wait without end for reasons no error reports: a read task that no CPU is left for, an
actor or a worker group the cluster cannot place, a task that asks for a resource no node has. Ray then
waits (an autoscaling cluster might still add a node), and the run sits at a few percent CPU. So
`run_watched` runs a stage's work in a thread and watches its progress: a `Heartbeat` actor that the
stage's driver loop and its workers tell of every bit of work (a batch trained, a block of results
received). When nothing has happened for `seconds` (the config's `watchdog_seconds`), the stage ends
with a `StageStalled` error that says what Ray has pending and what it would need, what the cluster has
free, and which setting to change. The work's own thread is left behind; the process is expected to end
with the error (as the command line does).
"""

from __future__ import annotations

import threading
import time

POLL_SECONDS = 2.0


class StageStalled(RuntimeError):
    """A stage made no progress for longer than its watchdog allows; the message says what is pending."""


class Heartbeat:
    """A Ray actor (no CPU) that counts the work a stage reports and remembers when it last did."""

    def __init__(self):
        self.last, self.total = time.time(), 0

    def beat(self, amount: int = 1) -> None:
        self.last, self.total = time.time(), self.total + amount

    def state(self) -> tuple[float, int]:
        return self.last, self.total


def start_heartbeat():
    import ray

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's own node: the run cannot outlive that node anyway, and a heartbeat on a node that is
    # lost mid-stage would take the stage down with it (seen when a worker node was killed during training).
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(Heartbeat).options(scheduling_strategy=here).remote()


def pending_work() -> list[str]:
    """One line per task, actor or placement group that Ray has not placed, with what it asks for."""
    from ray.util.state import list_actors, list_placement_groups, list_tasks

    lines = []
    for task in list_tasks(filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], detail=True, raise_on_missing_output=False):
        lines.append(f"task {task.name} needs {_resources(task.required_resources)}")
    for actor in list_actors(filters=[("state", "=", "PENDING_CREATION")], detail=True, raise_on_missing_output=False):
        lines.append(f"actor {actor.class_name} needs {_resources(actor.required_resources)}")
    for group in list_placement_groups(filters=[("state", "=", "PENDING")], detail=True, raise_on_missing_output=False):
        bundles = [_resources(bundle.get("unit_resources", bundle)) for bundle in (group.bundles or [])]
        lines.append(f"placement group {group.name or group.placement_group_id} needs {', '.join(bundles) or 'resources'}")
    return lines


def _resources(resources: dict | None) -> str:
    shown = {k: v for k, v in (resources or {}).items() if not k.startswith(("node:", "bundle_group"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def diagnosis(stage: str, seconds: float, hint: str) -> str:
    import ray

    try:
        pending = pending_work()
    except Exception as error:  # the state API needs the dashboard; say so rather than hide the stall
        pending = [f"(Ray's state API did not answer: {error})"]
    total, free = ray.cluster_resources(), ray.available_resources()
    resources = ", ".join(f"{name} {free.get(name, 0):g} of {total[name]:g}" for name in ("CPU", "GPU") if name in total)
    lines = [f"stage {stage} made no progress for {seconds:.0f} s, so it was stopped (the limit is the config's watchdog_seconds)."]
    lines.append("Ray has pending: " + ("; ".join(pending) if pending else "nothing it reports (the work itself is stuck)"))
    lines.append(f"free now: {resources}")
    if hint:
        lines.append(hint)
    return "\n  ".join(lines)


def run_watched(work, *, stage: str, seconds: float, hint: str = ""):
    """`work(heartbeat)` in a thread of its own; its result, its exception, or `StageStalled` when the
    heartbeat it is given has not moved for `seconds`."""
    import ray

    heartbeat = start_heartbeat()
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work(heartbeat)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"cu-scale {stage}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if not thread.is_alive():
            break
        last, _ = ray.get(heartbeat.state.remote())
        if time.time() - last > seconds:
            raise StageStalled(diagnosis(stage, time.time() - last, hint))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

"""Jobs on a real Ray head: `ray start --head` with token authentication (Ray 2.60's default) and the dashboard on
127.0.0.1; the demo pipeline submitted with `ray job submit` and with `cu-scale submit`; the project's metrics
read from the nodes' metrics endpoints; the nodes stopped at the end (only this head: `ray stop` would stop
every Ray on the machine)."""

import json
import os
import pathlib
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

from cu_scale.cli import main
from cu_scale.config import ConfigError, load_config, resolve_paths
from tiny_run import SETTINGS, VIDEOS

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
# The shared tiny run's settings (tests/tiny_run.py), so that the tiny run is the one-node result this
# cluster's must match; its explicit stage on two workers, one per node.
CLUSTER_RUN = [*SETTINGS, f"prepare.videos={VIDEOS}", "explicit.workers=2", "explicit.placement=spread", "explicit.checkpoint_every=1"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _json_list(printed: str) -> list:
    """The JSON list `ray list ... --format json` printed (after any line Ray logs before it)."""
    start = printed.find("[")
    return json.loads(printed[start:]) if start >= 0 else []


def _start_node(command: list[str], env: dict, log_path: pathlib.Path, ready) -> subprocess.Popen:
    """A `ray start --block` process in a process group of its own, waited for until `ready()` holds."""
    log = open(log_path, "w")
    node = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready():
        if node.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{command[1:3]} did not start: {log_path.read_text()[-3000:]}")
        time.sleep(1)
    return node


def _stop_node(node: subprocess.Popen, temp: pathlib.Path) -> None:
    os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
    try:
        node.wait(timeout=5)  # it would take half a minute to stop them gracefully: nothing of it is kept
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
    for pid in _processes_mentioning(str(temp)):  # anything of this node's that outlived it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _node_ports() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port")
    return [arg for name, port in zip(names, _free_ports(len(names))) for arg in (name, str(port))]


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """A Ray cluster of our own on 127.0.0.1: a head and a second node joined with `ray start --address`, each
    with its own temp dir and free ports, token authentication (Ray 2.60's default) with a token file of its
    own, and the S3 server's credentials in the nodes' environment, as a cluster's nodes would have them."""
    temp = pathlib.Path(tempfile.mkdtemp(prefix="cuh", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    gcs, dashboard, client = _free_ports(3)
    metrics = _free_ports(1)[0]
    env = {
        **os.environ,
        **s3_server["env"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_metrics_report_interval_ms": "1000",  # metrics reach the endpoint within a second, not ten
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
        # A lost node is noticed after 3 missed health checks a second apart, not Ray's default of about half a minute.
        "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
    }
    env.pop("RAY_ADDRESS", None)
    address = f"http://127.0.0.1:{dashboard}"

    def head_answers() -> bool:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            return True
        except OSError as error:  # refused until it listens; 401 once it does
            return getattr(error, "code", None) == 401

    head_command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "2", "--temp-dir", str(temp / "ray"),
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), *_node_ports(),
    ]
    head_command[head_command.index("--metrics-export-port") + 1] = str(metrics)
    metrics_urls = [f"http://127.0.0.1:{metrics}/metrics"]  # every node's, the lost ones too (they stop answering)
    head = _start_node(head_command, env, temp / "head.log", head_answers)
    workers: list[tuple[subprocess.Popen, pathlib.Path]] = []
    joined = iter(range(1, 100))

    def add_node() -> None:
        """Join one more node of 2 CPUs to the head (as a cluster replaces a lost node)."""
        node_temp = temp / f"node{next(joined)}"
        command = [
            str(BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs}", "--block", "--disable-usage-stats", "--num-cpus", "2",
            "--temp-dir", str(node_temp), "--node-ip-address", "127.0.0.1", *_node_ports(),
        ]
        metrics_urls.append(f"http://127.0.0.1:{command[command.index('--metrics-export-port') + 1]}/metrics")
        node_temp.mkdir()
        log = temp / f"{node_temp.name}.log"
        workers.append((_start_node(command, env, log, lambda: "Ray runtime started" in log.read_text()), node_temp))

    def lose_node() -> None:
        """The newest non-head node dies at once, every process of it (SIGKILL), as when its machine is lost."""
        import psutil

        node, node_temp = workers.pop()
        # The node's processes (those that name its temp dir: raylet, agents) and all they started: its Ray
        # workers rename themselves (ray::RayTrainWorker) but are the raylet's children.
        doomed = set()
        for pid in [node.pid, *_processes_mentioning(str(node_temp))]:
            try:
                root = psutil.Process(pid)
                doomed |= {root, *root.children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
        for process in doomed:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        node.wait()

    try:
        add_node()
        yield {
            "address": address, "gcs": f"127.0.0.1:{gcs}", "env": env, "metrics": metrics_urls, "temp": temp,
            "add_node": add_node, "lose_node": lose_node,
        }
    finally:
        for node, node_temp in workers:
            _stop_node(node, node_temp)
        _stop_node(head, temp)


def test_a_worker_of_the_embedded_ray_finds_its_own_ray_while_another_runs(ray_cluster, local_ray):
    """Ray Train frees a stopped trial's workers through the state API, called in a worker; with two Rays
    on one machine that API refuses to guess which one it is in, unless the embedded Ray told its workers."""

    @local_ray.remote(num_cpus=0)
    class Marker:
        def ready(self):
            return True

    marker = Marker.options(name="cu-scale-marker").remote()
    local_ray.get(marker.ready.remote())

    @local_ray.remote(num_cpus=0)
    def names_of_live_actors():
        from ray.util.state import list_actors

        return [actor.name for actor in list_actors(filters=[("state", "=", "ALIVE")])]

    try:
        assert "cu-scale-marker" in local_ray.get(names_of_live_actors.remote(), timeout=120)
    finally:
        local_ray.kill(marker)


class MetricsRecorder(threading.Thread):
    """Reads every node's metrics endpoint every second while jobs run: each metric name seen, with its lines.
    `urls` is the cluster's list, which grows as nodes join."""

    def __init__(self, urls: list[str]):
        super().__init__(daemon=True)
        self.urls, self.seen, self.stop = urls, {}, threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            for url in list(self.urls):
                try:
                    text = urllib.request.urlopen(url, timeout=2).read().decode()
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("ray_cu_scale_"):
                        self.seen.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)


def _listed(cluster: dict, what: str, *filters: str) -> list[dict]:
    """`ray list WHAT` on the cluster (its state API), dead ones included."""
    listed = subprocess.run(
        [str(BIN / "ray"), "list", what, "--address", cluster["address"], *(arg for f in filters for arg in ("--filter", f)), "--detail", "--format", "json", "--limit", "1000"],
        env=cluster["env"], capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return _json_list(listed.stdout)


def _submit(cluster: dict, root, settings: list[str], tool: str) -> subprocess.Popen:
    """The demo pipeline submitted as a job, followed until it ends, with Ray's own CLI (as the README shows
    it) or with `cu-scale submit` (the token from the environment; a process of its own, as a user runs it:
    Ray caches the first token a process reads, and this one's local Ray has another)."""
    if tool == "ray":
        command = [str(BIN / "ray"), "job", "submit", "--address", cluster["address"], "--working-dir", str(REPO), "--",
                   "python", "-m", "jobs.run", "--config", "configs/demo.yaml", "--root", str(root), "--quiet", *_sets(settings)]
    else:
        command = [str(BIN / "cu-scale"), "submit", "configs/demo.yaml", "--address", cluster["address"], "--root", str(root), "--quiet", *_sets(settings)]
    return subprocess.Popen(command, env=cluster["env"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoints(stage_dir, job: subprocess.Popen, what: str) -> None:
    """Until Ray Train's controller has surely registered a checkpoint of the stage; a worker's report waits
    until the controller has taken its previous one, so once two are written the first is registered (a
    group restarts only from registered checkpoints)."""
    deadline = time.monotonic() + 600
    while sum((checkpoint / "cu_scale_epoch.json").is_file() for checkpoint in stage_dir.glob("checkpoint_2*")) < 2:
        if job.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the job ended before {what} had two checkpoints: {job.communicate()[0][-5000:]}")
        time.sleep(0.2)


def _sets(settings: list[str]) -> list[str]:
    return [arg for item in settings for arg in ("--set", item)]


@pytest.fixture(scope="module")
def two_node_run(ray_cluster, s3_server, tmp_path_factory):
    """The demo pipeline as a job on the two-node cluster, its store and run directory in S3 and nothing on a
    shared disk, through two faults:
    1. during the implicit stage, its driver (the job's entrypoint, what `cu-scale run` is in a job) is killed;
       the same job submitted again (with Ray's own CLI, the first was `cu-scale submit`) must skip the
       finished stages and resume from the last checkpoint;
    2. during the explicit stage, whose two workers are spread one per node, the second node is lost with
       its worker, and a new node joins (as a cluster replaces a lost node): Ray Train restarts the group
       from its last checkpoint (FailureConfig(max_failures=explicit.max_failures))."""
    import psutil
    from conftest import new_bucket

    from cu_scale.storage import locate

    os.environ.update(s3_server["env"])
    root = tmp_path_factory.mktemp("job-root")
    bucket = new_bucket(s3_server, "two-node-run")
    store, run = locate(f"{bucket}/store"), locate(f"{bucket}/run")
    settings = [*CLUSTER_RUN, f"store={store}", f"run_dir={run}"]
    recorder = MetricsRecorder(ray_cluster["metrics"])
    recorder.start()

    first = _submit(ray_cluster, root, settings, "cu-scale")
    _wait_for_checkpoints(run / "implicit", first, "the implicit stage")
    def driver(command: list[str]) -> bool:  # the job's entrypoint, not the `ray job submit` that follows it
        return "jobs.run" in command and "submit" not in command and any(str(run) in part for part in command)

    drivers = [p for p in psutil.process_iter(["cmdline"]) if driver(p.info["cmdline"] or [])]
    assert len(drivers) == 1, [p.info["cmdline"] for p in drivers]
    drivers[0].kill()
    killed, _ = first.communicate(timeout=300)

    second = _submit(ray_cluster, root, settings, "ray")
    _wait_for_checkpoints(run / "explicit" / "BoundaryRegressor-pseudo", second, "the explicit stage")
    ray_cluster["lose_node"]()
    ray_cluster["add_node"]()
    printed, _ = second.communicate(timeout=900)
    return {
        "store": store, "run": run, "root": root, "settings": settings, "killed": (first.returncode, killed),
        "printed": printed, "status": second.returncode, "recorder": recorder,
    }


def test_the_demo_pipeline_runs_on_two_nodes_in_s3_survives_a_killed_driver_and_a_lost_node(two_node_run, ray_cluster, s3_server, tiny_run):
    run, store, root, printed = two_node_run["run"], two_node_run["store"], two_node_run["root"], two_node_run["printed"]
    status, killed = two_node_run["killed"]
    assert status == 1 and re.search(r"job raysubmit_\w+ FAILED", killed), killed[-3000:]  # the job whose driver was killed failed ...
    assert two_node_run["status"] == 0, printed[-5000:]  # ... and the same job again finished the run
    assert "succeeded" in printed.lower() and "run finished" in printed
    for stage in ("prepare", "encode", "cluster"):
        assert re.search(rf"✓ {stage} +finished .* \(skipped", printed), printed[-3000:]
    implicit = json.loads((run / "stages" / "implicit.json").read_text())["summary"]["metrics"]
    assert implicit["epoch"] == 5 and implicit["resumed_from_epoch"] >= 1, implicit  # resumed, not from scratch
    explicit = json.loads((run / "stages" / "explicit.json").read_text())["summary"]["BoundaryRegressor-pseudo"]
    assert explicit["epoch"] == 2 and explicit["resumed_from_epoch"] >= 1, explicit  # the group restarted from a checkpoint

    written = run.walk_files()
    for name in ("metrics.json", "report.md", "plots/iou_histogram.png", "stages/evaluate.json", "predictions/BoundaryRegressor-pseudo.jsonl", "pseudo_labels/part-00000.parquet"):
        assert name in written, sorted(written)
    assert any(name.startswith("tensorboard/explicit/BoundaryRegressor-pseudo/events.out.tfevents.") for name in written)
    checkpoint = max(name.split("/")[2] for name in written if name.startswith("explicit/BoundaryRegressor-pseudo/checkpoint_2"))
    assert {f"explicit/BoundaryRegressor-pseudo/{checkpoint}/cu_scale_files_rank{rank}.json" for rank in (0, 1)} <= set(written)
    assert (store / "manifest.json").is_file() and (store / "embeddings" / "part-00000.parquet").is_file()
    assert not any(root.iterdir())  # nothing on the local disk
    # The explicit workers were spread: one of them ran on the node that was lost.
    lost = {node["node_id"] for node in _listed(ray_cluster, "nodes") if node["state"] == "DEAD"}
    workers = _listed(ray_cluster, "actors", "class_name=RayTrainWorker")
    assert len(lost) == 1 and lost & {actor["node_id"] for actor in workers}, ([(a["node_id"], a["state"]) for a in workers], lost)
    # No credential reached any artifact.
    assert not [name for name in written if s3_server["secret"].encode() in (run / name).read_bytes()]

    # The result matches the one-node run of the same settings (the shared tiny run: one explicit worker,
    # no faults) within the noise of restarts and of a batch split over two workers.
    two = json.loads((run / "metrics.json").read_text())
    one = json.loads((tiny_run.root / "metrics.json").read_text())
    for name, (a, b) in {
        "pseudo-labels": (two["pseudo_labels"]["pseudo-labels"]["mIoU"], one["pseudo_labels"]["pseudo-labels"]["mIoU"]),
        "test mIoU": (two["explicit"]["BoundaryRegressor-pseudo"]["mIoU"], one["explicit"]["BoundaryRegressor-pseudo"]["mIoU"]),
    }.items():
        print(f"one node against two: {name} {b:.2f} against {a:.2f}")
        assert abs(a - b) <= 5, (name, a, b)

    # The project's metrics, from the nodes' metrics endpoints.
    recorder = two_node_run["recorder"]
    deadline = time.monotonic() + 30
    wanted = {"ray_cu_scale_encoded_queries_total", "ray_cu_scale_train_loss", "ray_cu_scale_train_samples_per_second"}
    while not wanted <= set(recorder.seen) and time.monotonic() < deadline:
        time.sleep(1)
    recorder.stop.set()
    assert wanted <= set(recorder.seen), sorted(recorder.seen)
    assert any('term="l1"' in line and 'stage="explicit/BoundaryRegressor-pseudo"' in line for line in recorder.seen["ray_cu_scale_train_loss"])
    assert any('store="store"' in line for line in recorder.seen["ray_cu_scale_encoded_queries_total"])


def test_a_client_without_the_token_is_refused_with_what_to_set(ray_cluster, tmp_path):
    # (A failed job's exit status is in the cluster test: the job whose driver is killed.)
    # A client without the token (a fresh process: Ray caches a token once it has read one).
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    refused = subprocess.run(
        [str(BIN / "cu-scale"), "submit", "configs/demo.yaml", "--address", ray_cluster["address"], "--root", str(tmp_path), "--no-wait"],
        env={**env, "HOME": str(tmp_path)}, cwd=REPO, capture_output=True, text=True, timeout=120,  # no ~/.ray/auth_token either
    )
    assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-2000:]


def test_relative_paths_are_resolved_under_the_root_or_refused_by_name(tmp_path, capsys):
    config = load_config(REPO / "configs" / "demo.yaml")
    with pytest.raises(ConfigError, match=r"store: runs/demo/store; run_dir: runs/demo.*--root"):
        resolve_paths(config, None)
    resolved = resolve_paths(config, tmp_path)
    assert resolved.store == str(tmp_path / "runs/demo/store") and resolved.run_dir == str(tmp_path / "runs/demo")
    assert resolved.implicit == config.implicit and resolve_paths(resolved, None) == resolved
    # The job entrypoint refuses before it touches Ray; `cu-scale submit` refuses before it uploads anything.
    import jobs.run

    assert jobs.run.main(["--config", str(REPO / "configs" / "demo.yaml")]) == 2
    assert "relative paths" in capsys.readouterr().err
    assert main(["submit", str(REPO / "configs" / "demo.yaml"), "--address", "http://127.0.0.1:9", "--working-dir", str(REPO)]) == 2
    assert "--root DIR" in capsys.readouterr().err
    outside = tmp_path / "outside.yaml"
    outside.write_text((REPO / "configs" / "demo.yaml").read_text())
    assert main(["submit", str(outside), "--address", "http://127.0.0.1:9", "--root", str(tmp_path), "--working-dir", str(REPO)]) == 2
    assert "must lie inside the uploaded working directory" in capsys.readouterr().err


def test_submit_never_uploads_credential_files(tmp_path):
    """The package Ray builds from the working directory (its own packaging code, with the excludes
    `cu-scale submit` passes) holds the code and the config, and none of the credential files beside them."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from cu_scale.ops.submission import prepare_submission

    working = tmp_path / "checkout"
    wanted = ["jobs/run.py", "configs/run.yaml", "cu_scale/storage.py", "README.md"]
    secrets_on_disk = [
        ".env", "configs/prod.env", ".aws/credentials", "credentials", ".ray/auth_token", "auth_token", "ci.token",
        ".ssh/id_ed25519", "id_rsa", "deploy/tls.key", "deploy/tls.pem", "keys/gcp-service-account-prod.json",
        ".kube/config", "kubeconfig", ".docker/config.json", ".netrc", ".git-credentials", ".pgpass", ".pypirc",
    ]
    for name in wanted + secrets_on_disk:
        (working / name).parent.mkdir(parents=True, exist_ok=True)
        (working / name).write_text("store: /data/store\nrun_dir: /data/run\n" if name.endswith("run.yaml") else "x")
    config, runtime_env = prepare_submission(str(working / "configs" / "run.yaml"), {}, None, str(working))
    package = tmp_path / "package.zip"
    create_package(runtime_env["working_dir"], package, include_gitignore=True, excludes=runtime_env["excludes"])
    uploaded = {name for name in zipfile.ZipFile(package).namelist() if not name.endswith("/")}
    assert config == "configs/run.yaml" and uploaded == set(wanted)

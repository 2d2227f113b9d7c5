"""Jobs on a real Ray head: `ray start --head` with token authentication (Ray 2.60's default) and the dashboard on
127.0.0.1; the demo pipeline submitted with `ray job submit` and with `cu-scale submit`; the project's metrics
read from the head's metrics endpoint; the head stopped at the end (only this head: `ray stop` would stop
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
# The shared tiny run's settings (tests/tiny_run.py) with the other explicit model on ground truth: with the
# tiny run, both models and both kinds of target go through Ray Train + DeepSpeed. (No label source reads
# pseudo-labels, so the implicit and pseudo-label stages are skipped: tests/test_implicit_stage.py has them.)
TINY = [*SETTINGS, f"prepare.videos={VIDEOS}", "explicit.models=[cu_scale.method.grounding_models:SpanDETR]", "explicit.label_sources=[gt]"]


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
    }
    env.pop("RAY_ADDRESS", None)
    address = f"http://127.0.0.1:{dashboard}"

    def head_answers() -> bool:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            return True
        except OSError as error:  # refused until it listens; 401 once it does
            return getattr(error, "code", None) == 401

    def nodes_alive() -> int:
        listed = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", address, "--format", "json", "--filter", "state=ALIVE"],
                                env=env, capture_output=True, text=True, timeout=60)
        return len(_json_list(listed.stdout)) if listed.returncode == 0 else 0

    head_command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "2", "--temp-dir", str(temp / "ray"),
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), *_node_ports(),
    ]
    head_command[head_command.index("--metrics-export-port") + 1] = str(metrics)
    head = _start_node(head_command, env, temp / "head.log", head_answers)
    second = None
    try:
        second_command = [
            str(BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs}", "--block", "--disable-usage-stats", "--num-cpus", "2",
            "--temp-dir", str(temp / "ray-second"), "--node-ip-address", "127.0.0.1", *_node_ports(),
        ]
        second = _start_node(second_command, env, temp / "second.log", lambda: nodes_alive() == 2)
        yield {"address": address, "env": env, "metrics": f"http://127.0.0.1:{metrics}/metrics", "temp": temp, "second": second}
    finally:
        if second is not None:
            _stop_node(second, temp / "ray-second")
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
    """Reads the head's metrics endpoint every second while jobs run: each metric name seen, with its lines."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen, self.stop = url, {}, threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                text = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("ray_cu_scale_"):
                    self.seen.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)


def _actors(cluster: dict, class_name: str) -> list[dict]:
    listed = subprocess.run(
        [str(BIN / "ray"), "list", "actors", "--address", cluster["address"], "--filter", f"class_name={class_name}", "--detail", "--format", "json", "--limit", "1000"],
        env=cluster["env"], capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return _json_list(listed.stdout)


def test_the_demo_pipeline_runs_as_a_job_on_two_nodes_with_its_store_and_run_in_s3(ray_cluster, s3_bucket, s3_server, tmp_path):
    from cu_scale.storage import locate

    recorder = MetricsRecorder(ray_cluster["metrics"])
    recorder.start()
    store, run = locate(f"{s3_bucket}/store"), locate(f"{s3_bucket}/run")
    # Two explicit workers, spread: one on each node. Nothing is on a shared disk: store and run are in S3.
    settings = [*TINY, f"store={store}", f"run_dir={run}", "explicit.workers=2", "explicit.placement=spread"]
    sets = [arg for item in settings for arg in ("--set", item)]

    # 1. Ray's own CLI, as the README shows it.
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_cluster["address"], "--working-dir", str(REPO), "--",
         "python", "-m", "jobs.run", "--config", "configs/demo.yaml", "--root", str(tmp_path), "--quiet", *sets],
        env=ray_cluster["env"], cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout.lower() and "run finished" in submitted.stdout
    written = run.walk_files()
    for name in ("metrics.json", "report.md", "plots/iou_histogram.png", "stages/evaluate.json", "predictions/SpanDETR-gt.jsonl"):
        assert name in written, sorted(written)
    assert any(name.startswith("tensorboard/explicit/SpanDETR-gt/events.out.tfevents.") for name in written)
    checkpoint = max(name.split("/")[2] for name in written if name.startswith("explicit/SpanDETR-gt/checkpoint_2"))
    assert {f"explicit/SpanDETR-gt/{checkpoint}/cu_scale_files_rank{rank}.json" for rank in (0, 1)} <= set(written)
    assert (store / "manifest.json").is_file() and (store / "embeddings" / "part-00000.parquet").is_file()
    assert not any(tmp_path.iterdir())  # nothing on the local disk
    # The two training workers ran on the two nodes.
    workers = _actors(ray_cluster, "RayTrainWorker")
    assert len({actor["node_id"] for actor in workers}) == 2, [(a["node_id"], a["state"]) for a in workers]
    # No credential reached any artifact.
    assert not [name for name, size in written.items() if s3_server["secret"].encode() in (run / name).read_bytes()]

    # 2. `cu-scale submit`, redoing the run from the report stage; the token comes from the environment. A process
    #    of its own, as a user runs it: Ray caches the first token a process reads (this one's local Ray has another).
    before = (run / "report.md").info().mtime
    resubmitted = subprocess.run(
        [str(BIN / "cu-scale"), "submit", "configs/demo.yaml", "--address", ray_cluster["address"], "--root", str(tmp_path), "--from", "report", "--quiet", *sets],
        env=ray_cluster["env"], cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    out = resubmitted.stdout
    assert resubmitted.returncode == 0, out[-3000:] + resubmitted.stderr[-3000:]
    assert "✓ explicit" in out and "skipped" in out and re.search(r"job raysubmit_\w+ SUCCEEDED", out)
    assert (run / "report.md").info().mtime > before

    # 3. The project's metrics, from the head's metrics endpoint.
    deadline = time.monotonic() + 30
    wanted = {"ray_cu_scale_encoded_queries_total", "ray_cu_scale_train_loss", "ray_cu_scale_train_samples_per_second"}
    while not wanted <= set(recorder.seen) and time.monotonic() < deadline:
        time.sleep(1)
    recorder.stop.set()
    assert wanted <= set(recorder.seen), sorted(recorder.seen)
    assert any('term="giou"' in line and 'stage="explicit/SpanDETR-gt"' in line for line in recorder.seen["ray_cu_scale_train_loss"])
    assert any('store="store"' in line for line in recorder.seen["ray_cu_scale_encoded_queries_total"])


def test_a_job_fails_with_a_nonzero_exit_and_no_token_is_refused_with_what_to_set(ray_cluster, tmp_path):
    # The pseudo-label stage alone, before any implicit checkpoint exists: the job fails, and so does the command.
    failed = subprocess.run(
        [str(BIN / "cu-scale"), "submit", "configs/demo.yaml", "--address", ray_cluster["address"], "--root", str(tmp_path), "--stage", "pseudo-label", "--quiet"],
        env=ray_cluster["env"], cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert failed.returncode == 1 and re.search(r"job raysubmit_\w+ FAILED", failed.stdout) and "no checkpoint under" in failed.stdout, failed.stdout[-3000:]

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

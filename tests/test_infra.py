"""Every file under infra/ is validated offline, against the schema of what reads it.

The validators, and what each one checks, are in `tests/infra_checks.py`.
`test_every_file_under_infra_has_a_validator_and_passes_it` runs over all files under infra/: a new file that no
validator claims fails it. For each validator, a test mutates a valid file in memory (a misspelled
field, a wrong type) and checks that validation fails. The KubeRay tests need the KubeRay CRDs (the
operator's `openAPIV3Schema`), which `infra_checks.KUBERAY_SCHEMAS` locates.
"""

import json
import re

import pytest
import yaml

from infra_checks import (
    AUTH_KEY,
    AUTH_SECRET,
    IMAGE,
    INFRA,
    INFRA_FILES,
    RUNS_CLAIM,
    load_yaml_documents,
    run_validator,
    validate_core_kinds,
    validate_dockerfile,
    validate_dockerignore,
    validate_grafana,
    validate_kuberay,
    validate_launcher,
    validate_prometheus,
    validate_readme,
    validator_for,
)


def test_infra_holds_every_manifest_file():
    expected = {
        "README.md", "cluster-launcher.yaml", "docker/Dockerfile", "docker/Dockerfile.dockerignore",
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "prometheus/prometheus.yml", "grafana/cu-scale-dashboard.json",
    }
    present = {p.relative_to(INFRA).as_posix() for p in INFRA_FILES}
    assert expected <= present, f"missing under infra/: {sorted(expected - present)}"


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_file_under_infra_has_a_validator_and_passes_it(path, tmp_path):
    run_validator(path, path.read_text(), tmp_path)


# --- Cross-file consistency --------------------------------------------------------------------


def test_rayjob_runs_the_same_cluster_as_the_raycluster():
    cluster = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"


def test_pods_reference_the_secret_and_the_claim_that_infra_defines():
    core = [doc for path in (INFRA / "kubernetes").glob("*.yaml") for doc in load_yaml_documents(path.read_text())]
    secrets = {d["metadata"]["name"]: d for d in core if d["kind"] == "Secret"}
    claims = {d["metadata"]["name"]: d for d in core if d["kind"] == "PersistentVolumeClaim"}
    assert AUTH_KEY in secrets[AUTH_SECRET].get("stringData", {}) | secrets[AUTH_SECRET].get("data", {})
    assert "ReadWriteMany" in claims[RUNS_CLAIM]["spec"]["accessModes"], "Ray pods on several nodes share the run directory"
    deployments = [d for d in core if d["kind"] == "Deployment"]
    services = [d for d in core if d["kind"] == "Service"]
    configmaps = {d["metadata"]["name"] for d in core if d["kind"] == "ConfigMap"}
    for deployment in deployments:
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{volume['configMap']['name']} is not defined"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in services:
        assert any(service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments), (
            f"Service {service['metadata']['name']} selects no Deployment's pods"
        )


def test_every_manifest_names_the_same_image():
    texts = [p.read_text() for p in INFRA_FILES if p.suffix in (".yaml", ".yml")]
    images = {m for text in texts for m in re.findall(r"\bimage:\s*(\S+)", text)}
    ours = {i for i in images if "cu-scale" in i}
    assert ours == {IMAGE}, f"the manifests name {sorted(ours)}; expected only {IMAGE}"
    assert not [i for i in images if i.endswith(":latest") or ":" not in i.rsplit("/", 1)[-1]], f"unpinned image in {sorted(images)}"


# --- A wrong field makes each validator fail ---------------------------------------------------


def mutated_yaml(path, mutate, index=0):
    documents = load_yaml_documents(path.read_text())
    mutate(documents[index])
    return yaml.safe_dump_all(documents, sort_keys=False)


def rename(mapping, old, new):
    mapping[new] = mapping.pop(old)


RAYCLUSTER, RAYJOB = INFRA / "kuberay/raycluster.yaml", INFRA / "kuberay/rayjob.yaml"


@pytest.mark.parametrize(
    "path, mutate, expected",
    [
        (RAYCLUSTER, lambda d: rename(d["spec"], "workerGroupSpecs", "workerGroupSpec"), "workerGroupSpec"),
        (RAYCLUSTER, lambda d: d["spec"]["workerGroupSpecs"][1].update(replicas="1"), "is not of type 'integer'"),
        (RAYCLUSTER, lambda d: rename(d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0], "resources", "resource"), "resource"),
        (RAYCLUSTER, lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="16 GB"), "does not match"),
        (RAYCLUSTER, lambda d: d.update(apiVersion="ray.io/v2"), "no KubeRay CRD"),
        (RAYCLUSTER, lambda d: d["metadata"].update(labelz={"a": "b"}), "labelz"),
        (RAYJOB, lambda d: rename(d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"), "shutdownAfterJobFinish"),
        (RAYJOB, lambda d: d["spec"].update(entrypoint=["python", "-m", "jobs.run"]), "is not of type 'string'"),
        (RAYJOB, lambda d: d["spec"].update(backoffLimit="0"), "is not of type 'integer'"),
        (RAYJOB, lambda d: rename(d["spec"]["submitterPodTemplate"]["spec"]["containers"][0], "env", "envs"), "envs"),
    ],
    ids=["misspelled-workerGroupSpecs", "replicas-as-string", "misspelled-container-resources", "bad-quantity",
         "unknown-apiVersion", "unknown-metadata-field", "misspelled-shutdownAfterJobFinishes", "entrypoint-as-list", "backoffLimit-as-string",
         "misspelled-submitter-env"],
)
def test_kuberay_validation_rejects(path, mutate, expected):
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_kuberay(mutated_yaml(path, mutate), str(path))


def _prometheus_configmap_typo(doc):
    doc["data"]["prometheus.yml"] = doc["data"]["prometheus.yml"].replace("relabel_configs:", "relabel_config:")


@pytest.mark.parametrize(
    "name, mutate, index, expected",
    [
        ("runs-pvc.yaml", lambda d: rename(d["spec"], "accessModes", "accessMode"), 0, "accessMode"),
        ("runs-pvc.yaml", lambda d: d["spec"]["resources"]["requests"].update(storage=["500Gi"]), 0, "storage"),
        ("ray-auth-secret.yaml", lambda d: d.update(kind="Secrets"), 0, "Couldn't find schema"),
        ("ray-auth-secret.yaml", lambda d: d["stringData"].update(auth_token="committed-token"), 0, "a token is committed"),
        ("prometheus.yaml", lambda d: d["data"].update(replicas=1), 0, "data.replicas"),
        ("prometheus.yaml", _prometheus_configmap_typo, 0, "relabel_config"),
        ("prometheus.yaml", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(port=9090), 4, "port"),
        ("prometheus.yaml", lambda d: d["spec"].update(replicas="1"), 4, "replicas"),
    ],
    ids=["misspelled-accessModes", "storage-as-list", "unknown-kind", "committed-token", "configmap-value-not-string",
         "misspelled-prometheus-field-in-configmap", "unknown-container-field", "replicas-as-string"],
)
def test_core_kind_validation_rejects(name, mutate, index, expected):
    path = INFRA / "kubernetes" / name
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_core_kinds(mutated_yaml(path, mutate, index), str(path))


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: rename(c, "head_node_type", "head_node_typ"), "head_node_typ"),
        (lambda c: c.update(max_workers="8"), "is not of type 'integer'"),
        (lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_worker=0), "min_worker"),
        (lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].update(GPU=0.5), "GPU"),
        (lambda c: c["docker"].update(imagee="x"), "imagee"),
    ],
    ids=["misspelled-head_node_type", "max_workers-as-string", "misspelled-min_workers", "fractional-gpu-resource", "misspelled-docker-image"],
)
def test_launcher_validation_rejects(mutate, expected):
    path = INFRA / "cluster-launcher.yaml"
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_launcher(mutated_yaml(path, mutate), str(path))


DOCKERFILE = INFRA / "docker/Dockerfile"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "FROM nvidia/cuda:latest", "DL3007"),
        ("pip install --no-cache-dir pip==26.3", "pip install pip==26.3", "DL3042"),
        ("pip install --no-cache-dir pip==26.3", "pip install --no-cache-dir pip", "DL3013"),
        ("WORKDIR /app", "WORKDIRR /app", "DL1000"),
        ("USER 1000:1000", "USER root", "DL3002"),
        ("# hadolint ignore=DL3008", "# hadolint ignore=DL3008,DL3015", "DL3015"),
    ],
    ids=["latest-base", "pip-cache", "unpinned-pip", "misspelled-instruction", "root-user", "unreviewed-ignore"],
)
def test_dockerfile_lint_rejects(old, new, expected, tmp_path):
    text = DOCKERFILE.read_text()
    assert old in text
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_dockerfile(text.replace(old, new, 1), str(DOCKERFILE), tmp_path)


def test_dockerignore_validation_rejects():
    path = INFRA / "docker/Dockerfile.dockerignore"
    with pytest.raises(AssertionError, match="re-includes"):
        validate_dockerignore(path.read_text().replace("!configs/\n", ""), str(path))
    with pytest.raises(AssertionError, match="does not exist"):
        validate_dockerignore(path.read_text() + "!no-such-dir/\n", str(path))


PROMETHEUS = INFRA / "prometheus/prometheus.yml"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: rename(c["scrape_configs"][0], "file_sd_configs", "file_sd_config"), "file_sd_config"),
        (lambda c: c["global"].update(scrape_interval="10 seconds"), "does not match"),
        (lambda c: c["scrape_configs"][0]["file_sd_configs"][0].update(files="/tmp/ray/prom_metrics_service_discovery.json"), "is not of type 'array'"),
        (lambda c: c["scrape_configs"][0]["file_sd_configs"][0].update(files=["/tmp/ray/service_discovery.json"]), "discovery file"),
    ],
    ids=["misspelled-file_sd_configs", "bad-duration", "files-as-string", "wrong-discovery-file"],
)
def test_prometheus_validation_rejects(mutate, expected):
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_prometheus(mutated_yaml(PROMETHEUS, mutate), str(PROMETHEUS))


GRAFANA = INFRA / "grafana/cu-scale-dashboard.json"


def _first_query_panel(dashboard):
    return next(p for p in dashboard["panels"] if p["type"] != "row")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: rename(_first_query_panel(d), "targets", "target"), "target"),
        (lambda d: _first_query_panel(d)["gridPos"].update(w="12"), "is not of type 'integer'"),
        (lambda d: _first_query_panel(d)["targets"][0].update(expr="sum(ray_cu_scale_train_sample_per_second)"), "ray_cu_scale_train_sample_per_second"),
        (lambda d: d["templating"]["list"][2].update(definition="label_values(cu_scale_train_epoch, run)"), "cu_scale_train_epoch"),
        (lambda d: rename(d, "panels", "panel"), "panel"),
    ],
    ids=["misspelled-targets", "width-as-string", "unknown-metric", "unknown-metric-in-variable", "misspelled-panels"],
)
def test_grafana_validation_rejects(mutate, expected):
    dashboard = json.loads(GRAFANA.read_text())
    mutate(dashboard)
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validate_grafana(json.dumps(dashboard), str(GRAFANA))


def test_readme_validation_rejects():
    path = INFRA / "README.md"
    with pytest.raises(AssertionError, match="does not exist"):
        validate_readme(path.read_text() + "\nSee infra/kuberay/rayservice.yaml.\n", str(path))


def test_a_file_without_a_validator_fails():
    stray = INFRA / "helm" / "values.yaml"
    with pytest.raises(AssertionError, match="0 validators"):
        validator_for(stray)

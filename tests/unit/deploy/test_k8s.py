"""deploy/k8s/: the kustomize base and the example overlay, rendered and checked offline.

The overlay is rendered with the kustomize that `make bootstrap` builds (pinned in the
Makefile, kept in .cache/bin) and every object is validated against the Kubernetes
OpenAPI schemas bundled in the ``kubernetes-validate`` package (no cluster, no
network). Then the properties that matter to the worker: probes on its health
endpoints, RocksDB on a claim at OMNI_DATA_DIR, the rules ConfigMap at OMNI_RULES_DIR
(with the files of rules/), secrets referenced and never inlined, the disruption
budget and the scrape annotations.
"""

from __future__ import annotations

import json
import re
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from processors.settings import DEFAULT_RULES_DIR, Settings
from producers.actions import WeakActionTokenKeyError, check_action_token_key

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
#: Kubernetes versions the objects are validated against (schemas bundled in the
#: package): an older supported one and the newest it ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
#: Settings that are secrets: they may only come from a Secret.
SECRET_ENV = {
    f"OMNI_{name.upper()}"
    for name, field in Settings.model_fields.items()
    if SecretStr in typing.get_args(field.annotation) or field.annotation is SecretStr
}


def kustomize_binary() -> Path:
    match = re.search(r"^KUSTOMIZE_VERSION := (v\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile has no `KUSTOMIZE_VERSION := vX.Y.Z` line"
    binary = ROOT / ".cache" / "bin" / f"kustomize-{match.group(1)}"
    if not binary.is_file():
        pytest.fail(
            f"kustomize {match.group(1)} is not installed at {binary.relative_to(ROOT)}: run "
            "`make bootstrap` (it builds it with `go install`; Go 1.26+ is needed)",
            pytrace=False,
        )
    return binary


def build(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(kustomize_binary()),
            "build",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kustomize build {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return build(OVERLAY)


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert found, f"{kind} {name} is referenced but not rendered"
    return found[0]


@pytest.fixture(scope="module")
def sts(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "StatefulSet")


@pytest.fixture(scope="module")
def worker(sts: dict[str, Any]) -> dict[str, Any]:
    [container] = sts["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def port(container: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == ref]
    return int(number)


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if template:
            for container in template["spec"]["containers"]:
                yield f"{obj['kind']}/{obj['metadata']['name']}", container


def test_kustomize_is_the_pinned_version() -> None:
    binary = kustomize_binary()
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60)
    assert binary.name.removeprefix("kustomize-") in out.stdout


def test_every_rendered_object_is_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in objects}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "Job", "ConfigMap", "Secret"} <= kinds
    for version in KUBERNETES_VERSIONS:
        for obj in objects + build(BASE):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_a_broken_object(sts: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(sts))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_probes_hit_the_health_endpoints(sts: dict[str, Any], worker: dict[str, Any]) -> None:
    env = env_of(worker)
    assert env["OMNI_WEB_BIND"]["value"] == "0.0.0.0"  # probes come from the kubelet
    web_port = int(env.get("OMNI_WEB_PORT", {}).get("value", DEFAULTS["web_port"]))
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = worker[probe]["httpGet"]
        assert (get["path"], port(worker, get["port"])) == (path, web_port), probe
    # Startup (imports, opening RocksDB) may take minutes; recovery itself keeps /livez
    # green and only /readyz red, so liveness never kills a recovering worker.
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    live = worker["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    assert live["timeoutSeconds"] >= 3


def test_rocksdb_lives_on_a_claim_at_the_data_dir(
    sts: dict[str, Any], worker: dict[str, Any]
) -> None:
    data_dir = env_of(worker)["OMNI_DATA_DIR"]["value"]
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert mounts.get(data_dir) in claims, f"{data_dir} is not on a volumeClaimTemplate"


def test_each_pod_is_its_own_static_member(worker: dict[str, Any]) -> None:
    assert "instance_id" in Settings.model_fields
    ref = env_of(worker)["OMNI_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "metadata.name"


def test_grace_period_covers_the_last_checkpoint(sts: dict[str, Any]) -> None:
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 60 <= grace <= 600


def test_services_and_budget_select_the_worker_pods(
    objects: list[dict[str, Any]], sts: dict[str, Any]
) -> None:
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = named(objects, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["metadata"].get("namespace") == sts["metadata"].get("namespace")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    replicas = sts["spec"]["replicas"]
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert pdb["spec"]["minAvailable"] < replicas
    assert 1 <= replicas <= DEFAULTS["partitions"]


def test_rules_configmap_is_mounted_at_the_rules_dir(
    objects: list[dict[str, Any]], sts: dict[str, Any], worker: dict[str, Any]
) -> None:
    rules_dir = env_of(worker)["OMNI_RULES_DIR"]["value"]
    [mount] = [m for m in worker["volumeMounts"] if m["mountPath"] == rules_dir]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    source = volumes[mount["name"]]["configMap"]
    assert "items" not in source and "subPath" not in mount  # subPath mounts never update
    rules = named(objects, "ConfigMap", source["name"])
    shipped = {path.name: path.read_text() for path in DEFAULT_RULES_DIR.glob("*.yaml")}
    assert rules["data"] == shipped, "base/kustomization.yaml must list every rules/*.yaml"


def test_secrets_are_referenced_never_inlined(objects: list[dict[str, Any]]) -> None:
    assert {"OMNI_REDIS_URL", "OMNI_ACTION_TOKEN_KEY", "OMNI_KAFKA_SASL_PASSWORD"} <= SECRET_ENV
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        assert not SECRET_ENV & set(config.get("data", {})), config["metadata"]["name"]
    seen: set[str] = set()
    for where, container in containers(objects):
        for name, item in env_of(container).items():
            if name not in SECRET_ENV:
                continue
            seen.add(name)
            assert "value" not in item, f"{where}: {name} is inlined"
            ref = item["valueFrom"]["secretKeyRef"]
            secret = named(objects, "Secret", ref["name"])
            assert ref["key"] in secret.get("data", {}) or ref.get("optional"), (where, name)
    assert {"OMNI_REDIS_URL", "OMNI_ACTION_TOKEN_KEY", "OMNI_KAFKA_SASL_PASSWORD"} <= seen


def test_example_secrets_are_placeholders_the_worker_refuses(
    objects: list[dict[str, Any]], worker: dict[str, Any]
) -> None:
    import base64

    ref = env_of(worker)["OMNI_ACTION_TOKEN_KEY"]["valueFrom"]["secretKeyRef"]
    key = base64.b64decode(named(objects, "Secret", ref["name"])["data"][ref["key"]])
    with pytest.raises(WeakActionTokenKeyError):
        check_action_token_key(key)
    for secret in (o for o in objects if o["kind"] == "Secret"):
        for field, value in secret["data"].items():
            text = base64.b64decode(value).decode()
            if field != "username":
                assert "CHANGE-ME" in text, (secret["metadata"]["name"], field)


def test_prometheus_scrapes_the_metrics_port(sts: dict[str, Any], worker: dict[str, Any]) -> None:
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(env_of(worker).get("OMNI_METRICS_PORT", {}).get("value", 9108))
    assert metrics_port == DEFAULTS["metrics_port"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert port(worker, "metrics") == metrics_port


def test_memory_is_sized_from_the_bench_peak_rss(worker: dict[str, Any]) -> None:
    recovery = json.loads((ROOT / "bench" / "results" / "recovery.json").read_text())
    peak_mib = recovery["load"]["hwm_after_mb"]  # 1M customers, all 8 partitions

    def mib(quantity: str) -> float:
        units = {"Mi": 1, "Gi": 1024}
        return float(quantity[:-2]) * units[quantity[-2:]]

    requests, limits = worker["resources"]["requests"], worker["resources"]["limits"]
    assert mib(requests["memory"]) >= peak_mib
    assert mib(limits["memory"]) >= 1.5 * peak_mib


def test_topics_job_runs_the_same_image(
    objects: list[dict[str, Any]], worker: dict[str, Any]
) -> None:
    job = only(objects, "Job")
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["args"] == ["topics"] and worker["args"] == ["worker"]
    assert container["image"] == worker["image"]
    assert not worker["image"].startswith("omni-pipeline/worker")  # the overlay sets it
    assert spec["restartPolicy"] in {"OnFailure", "Never"}
    assert container["envFrom"] == worker["envFrom"]  # same bootstrap, partitions, namespace


def test_the_api_is_a_deployment_of_omni_api_behind_a_service(
    objects: list[dict[str, Any]], worker: dict[str, Any]
) -> None:
    deployment = named(objects, "Deployment", "omni-api")
    spec = deployment["spec"]["template"]["spec"]
    [api] = spec["containers"]
    assert (api["command"], api["args"]) == (["omni"], ["api"])
    assert api["image"] == worker["image"]  # the overlay's image, as the worker's
    env = env_of(api)
    api_port = int(env["OMNI_API_PORT"]["value"])
    assert api_port == DEFAULTS["api_port"] and env["OMNI_API_HOST"]["value"] == "0.0.0.0"
    for probe, path in {"livenessProbe": "/livez", "readinessProbe": "/readyz"}.items():
        get = api[probe]["httpGet"]
        assert (get["path"], port(api, get["port"])) == (path, api_port), probe
    # Secrets from Secrets (test_secrets_are_referenced_never_inlined checks the refs);
    # no Kafka settings: a broker's SASL protocol without credentials would not load.
    assert {"OMNI_API_TOKENS", "OMNI_REDIS_URL"} <= env.keys()
    assert "envFrom" not in api
    for name in env:
        assert name.startswith("OMNI_") and name[5:].lower() in Settings.model_fields, name
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = named(objects, "Service", "omni-api")
    assert service["spec"]["selector"].items() <= labels.items()
    [service_port] = service["spec"]["ports"]
    assert port(api, service_port["targetPort"]) == api_port

"""deploy/k8s: every manifest validates offline against the Kubernetes API schemas, and the pieces agree.

``kubernetes-validate --strict`` checks each resource against the OpenAPI schemas of the oldest and the newest
Kubernetes the manifests support (unknown fields are errors). The rest checks what no schema can: selectors that
select the pods, probes on the port the server listens on, a termination grace longer than the drain, settings
that exist, and an autoscaler metric the server exports.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics
from service.settings import Settings, env_name

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
VERSIONS = ("1.27.0", "1.37.0")  # grpc probes need >= 1.24 (GA 1.27); the newest schemas the validator ships


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, of the files kustomization.yaml applies."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return {(d["kind"], d["metadata"]["name"]): d for f in listed for d in load(K8S / f)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    for doc in load(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelled_field() -> None:
    deployment = copy.deepcopy(resources()[("Deployment", "seqpred")])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_at_its_top() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def server() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    res = resources()
    deployment = res[("Deployment", "seqpred")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config = res[("ConfigMap", "seqpred")]["data"]
    return deployment, container, config


def test_every_setting_in_the_configmap_is_a_server_setting() -> None:
    _, container, config = server()
    known = {env_name(name) for name in Settings.__dataclass_fields__}
    assert set(config) <= known, set(config) - known
    assert container["envFrom"] == [{"configMapRef": {"name": "seqpred"}}]
    assert container["args"] == ["serve"]


def test_probes_and_ports_match_the_server() -> None:
    _, container, config = server()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(config["SEQPRED_PORT"]), "metrics": int(config["SEQPRED_METRICS_PORT"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe


def test_termination_grace_outlasts_the_prestop_pause_and_the_drain() -> None:
    deployment, container, config = server()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause, drain = float(command[1]), float(config["SEQPRED_GRACE"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + drain


def test_services_pdb_and_autoscalers_select_the_server_pods() -> None:
    res = resources()
    deployment, _, config = server()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for name in ("seqpred", "seqpred-headless"):
        svc = res[("Service", name)]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), name
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {"grpc", "metrics"}
    assert res[("Service", "seqpred-headless")]["spec"]["clusterIP"] == "None"
    assert res[("PodDisruptionBudget", "seqpred")]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpas = [res[("HorizontalPodAutoscaler", "seqpred")], *load(K8S / "extras" / "hpa-sessions.yaml")]
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "seqpred"}
        assert hpa["spec"]["minReplicas"] > res[("PodDisruptionBudget", "seqpred")]["spec"]["minAvailable"] - 1
    redis = res[("StatefulSet", "seqpred-redis")]
    assert config["SEQPRED_STORE"] == "redis"
    assert config["SEQPRED_REDIS_URL"].startswith(f"redis://{redis['spec']['serviceName']}:6379/")


def test_the_session_autoscaler_uses_a_metric_the_server_exports() -> None:
    (hpa,) = load(K8S / "extras" / "hpa-sessions.yaml")
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exported = {m.name for m in Metrics(lambda: 0.0).registry.collect()}
    assert name in exported

"""The Helm chart, checked by Helm's own engine (helm-python-sdk: lint, template, values.schema.json), and
every rendered manifest validated offline: built-in kinds against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail), ServiceMonitor and PrometheusRule against prometheus-operator's CRD schemas.

Not verified here (no cluster can run on these machines): admission by a real API server, that the pod starts
from the published image, RBAC and the operator actually picking the ServiceMonitor/PrometheusRule up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import CRDS, REPO, deploy_module

from exporter.config import ConfigError, Settings, env_name, load_settings

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

CHART = REPO / "deploy" / "helm" / "mixpeek-exporter"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.25", kubernetes_validate.latest_version())
EVERYTHING_ON: dict[str, Any] = {
    "replicaCount": 2,
    "apiKey": {"value": "sk_chart_test"},
    "mixpeek": {
        "namespaces": ["prod", "staging"],
        "histogramBuckets": [1, 10, 60],
        "maxRequestsPerSecond": 5,
    },
    "stateFile": {"enabled": True},
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "metricRelabelings": [{"action": "drop", "regex": "mixpeek_exporter_tracked_tasks"}],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "alerts": {"labels": {"team": "search"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Mixpeek"}},
    "podAnnotations": {"example.com/owner": "search"},
    "podLabels": {"tier": "monitoring"},
    "extraArgs": ["--log-level", "debug"],
    "extraEnv": [{"name": "MIXPEEK_MAX_RETRIES", "value": "5"}],
    "imagePullSecrets": [{"name": "registry"}],
    "priorityClassName": "monitoring",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "monitoring", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "mixpeek-exporter"}},
                    },
                }
            ]
        }
    },
}


# StatefulSet mode: one pod per shard, with every other option on too.
SHARDED: dict[str, Any] = {**EVERYTHING_ON, "sharding": {"enabled": True, "shards": 3}}


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm template`: every manifest the chart renders, parsed."""
    helm_python.disable_logging()
    rendered = helm_python.Chart.load(str(chart)).render(values or {}, name="mx", namespace="monitoring")
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def kind(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == name]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kind(docs, "Deployment")
    (exporter,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(exporter)


def env(container_spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container_spec["env"]}


def crd_schema(plural: str) -> dict[str, Any]:
    if not CRDS.is_dir():
        pytest.skip(f"prometheus-operator CRDs not found in {CRDS}")
    crd = yaml.safe_load((CRDS / f"monitoring.coreos.com_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden, as the API server's strict field validation does
    (a structural schema otherwise prunes them silently, hiding a typo such as `honorLabel`)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in result or result.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in result and not open_ended:
        result["additionalProperties"] = False
    return result


def validate(docs: list[dict[str, Any]]) -> None:
    """Every manifest against its schema; a custom resource against its CRD's openAPIV3Schema."""
    custom = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}
    for doc in docs:
        if doc["kind"] in custom:
            # An OpenAPI v3 schema holds Go regexes (`^(?i)...`) that Python's metaschema check rejects: use
            # the schema as it is, without jsonschema.validate's check_schema.
            jsonschema.Draft7Validator(crd_schema(custom[doc["kind"]])).validate(doc)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


# Lint


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON, SHARDED], ids=["defaults", "everything-on", "sharded"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    helm_python.disable_logging()
    report = helm_python.lint(str(CHART), values, strict=True, kube_version="v1.25.0")
    assert report["errors"] == []
    # Only the "icon is recommended" hint may remain (severity 1 = info); no warning or error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mixpeek": {"pageSize": 5000}}, "at '/mixpeek/pageSize': maximum: got 5,000, want 1,000"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"alerts": {"failedSpike": {"window": "ten minutes"}}}, "at '/alerts/failedSpike/window'"),
        (
            {"alerts": {"batchObjectsFailureRatio": {"maxRatio": 10}}},
            "at '/alerts/batchObjectsFailureRatio/maxRatio'",
        ),
        ({"mixpeek": {"scope": "org"}}, "at '/mixpeek/scope'"),
        ({"serviceMonitr": {"enabled": True}}, "additional properties 'serviceMonitr' not allowed"),
        ({"securityContext": "privileged"}, "at '/securityContext': got string, want object"),
        ({"sharding": {"enabled": True, "shards": 0}}, "at '/sharding/shards': minimum: got 0, want 1"),
    ],
)
def test_a_wrong_value_fails_at_install_with_the_field_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as failure:
        render(values)
    assert message in str(failure.value)
    assert any(message in error for error in helm_python.lint(str(CHART), values)["errors"])


# Render + offline validation


def test_default_values_render_a_valid_deployment_and_service(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render()
    assert sorted(doc["kind"] for doc in docs) == ["Deployment", "Service"]
    validate(docs)
    variables = env(container(docs))
    # No key given: the pod fails closed at start ("no API key"; NOTES say so), never a silent demo.
    assert "MIXPEEK_API_KEY_FILE" not in variables and variables["MIXPEEK_DEMO"] == "false"
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="no API key"):
        load_settings()


def test_everything_on_renders_valid_manifests_and_custom_resources() -> None:
    docs = render(EVERYTHING_ON)
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "Deployment",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceMonitor",
    ]
    validate(docs)


def test_every_environment_variable_is_a_setting_of_the_exporter() -> None:
    known = {env_name(field) for field in Settings.model_fields}
    assert set(env(container(render(EVERYTHING_ON)))) <= known


def test_the_pod_is_locked_down_and_probed() -> None:
    docs = render()
    pod = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    exporter = container(docs)
    security = exporter["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 65532  # the image's USER
    assert pod["automountServiceAccountToken"] is False
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert exporter["resources"]["limits"]["memory"]
    annotations = kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9877",
        "prometheus.io/path": "/metrics",
    }


def test_the_key_comes_from_the_chart_secret_as_a_file() -> None:
    docs = render({"apiKey": {"value": "sk_chart_test"}})
    (secret,) = kind(docs, "Secret")
    exporter = container(docs)
    assert env(exporter)["MIXPEEK_API_KEY_FILE"] == "/etc/mixpeek/api-key"
    assert "sk_chart_test" not in json.dumps(exporter)  # never in an env var or argument
    (mount,) = exporter["volumeMounts"]
    assert mount == {"name": "mixpeek-api-key", "mountPath": "/etc/mixpeek", "readOnly": True}
    (volume,) = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_an_existing_secret_is_mounted_and_none_created() -> None:
    docs = render({"apiKey": {"existingSecret": "mixpeek", "secretKey": "token"}})
    assert kind(docs, "Secret") == []
    assert env(container(docs))["MIXPEEK_API_KEY_FILE"] == "/etc/mixpeek/token"
    (volume,) = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"] == {"secretName": "mixpeek", "items": [{"key": "token", "path": "token"}]}
    validate(docs)


def test_the_service_monitor_keeps_the_exporters_namespace_label() -> None:
    (monitor,) = kind(render(EVERYTHING_ON), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True and endpoint["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_prometheus_rule_carries_exactly_the_rules_file() -> None:
    """One source: deploy/prometheus/rules.yaml is the chart's rules rendered with the default thresholds."""
    (rule,) = kind(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    rules_file = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == rules_file
    build = deploy_module("deploy/prometheus/build.py")
    assert build.HEADER + build.render_rules() == (REPO / "deploy" / "prometheus" / "rules.yaml").read_text()


def test_alert_thresholds_are_values() -> None:
    alerts = {"failedSpike": {"window": "5m", "minFailures": 50, "minShare": 0.5, "severity": "warning"}}
    (rule,) = kind(render({"prometheusRule": {"enabled": True}, "alerts": alerts}), "PrometheusRule")
    (spike,) = [r for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "MixpeekTasksFailedSpike"]
    assert "[5m]" in spike["expr"] and ">= 50" in spike["expr"] and ">= 0.5" in spike["expr"]
    assert spike["labels"]["severity"] == "warning"


def test_batch_alert_thresholds_are_values() -> None:
    alerts = {
        "batchesFailed": {"window": "6h", "minFailures": 7, "severity": "critical"},
        "batchObjectsFailureRatio": {"window": "3h", "maxRatio": 0.02, "minObjects": 5000},
        "batchesStuckQueued": {"maxAgeSeconds": 600, "for": "1m"},
        "batchesStuckRunning": {"enabled": False},
    }
    (rule,) = kind(render({"prometheusRule": {"enabled": True}, "alerts": alerts}), "PrometheusRule")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    failed = rules["MixpeekBatchesFailed"]
    assert "[6h]" in failed["expr"] and ">= 7" in failed["expr"]
    assert failed["labels"]["severity"] == "critical"
    objects = rules["MixpeekBatchObjectsFailureRatioHigh"]["expr"]
    assert "[3h]" in objects and "> 0.02" in objects and ">= 5000" in objects
    queued = rules["MixpeekBatchesStuckQueued"]
    assert "> 600" in queued["expr"] and queued["for"] == "1m"
    assert "MixpeekBatchesStuckRunning" not in rules


def test_the_dashboard_config_map_is_the_generated_dashboard() -> None:
    (config_map,) = kind(render(EVERYTHING_ON), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Mixpeek"}
    committed = json.loads((REPO / "deploy" / "grafana" / "mixpeek-tasks.json").read_text())
    assert json.loads(config_map["data"]["mixpeek-tasks.json"]) == committed


def test_the_state_file_lives_on_an_empty_dir() -> None:
    docs = render({"stateFile": {"enabled": True}})
    assert env(container(docs))["MIXPEEK_STATE_FILE"] == "/var/lib/mixpeek-exporter/state.json"
    (volume,) = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "mixpeek-state", "emptyDir": {"sizeLimit": "64Mi"}}


def test_default_image_tag_is_the_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container(render())["image"] == f"ghcr.io/mixpeek/mixpeek-exporter:{app_version}"
    digest = "sha256:" + "a" * 64
    assert container(render({"image": {"digest": digest}}))["image"].endswith(f"@{digest}")


# Sharding: a StatefulSet


def test_sharding_renders_a_valid_statefulset_instead_of_the_deployment() -> None:
    docs = render(SHARDED)
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
    ]
    validate(docs)  # Kubernetes 1.25 (no pod-index label yet) and the newest
    (statefulset,) = kind(docs, "StatefulSet")
    (service,) = kind(docs, "Service")
    assert statefulset["spec"]["replicas"] == 3  # one pod per shard; replicaCount (2 here) is not used
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_each_pod_takes_its_shard_from_its_name() -> None:
    """The pod name comes from the downward API and the exporter parses the ordinal: pod N is shard N."""
    (statefulset,) = kind(render(SHARDED), "StatefulSet")
    (exporter,) = statefulset["spec"]["template"]["spec"]["containers"]
    variables = {item["name"]: item for item in exporter["env"]}
    assert variables["MIXPEEK_TOTAL_SHARDS"] == {"name": "MIXPEEK_TOTAL_SHARDS", "value": "3"}
    assert variables["MIXPEEK_POD_NAME"] == {
        "name": "MIXPEEK_POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert "MIXPEEK_SHARD" not in variables
    # A StatefulSet names its pods <name>-0 .. <name>-(replicas - 1).
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    shards = [
        load_settings(
            demo="true", pod_name=f"{name}-{ordinal}", total_shards=variables["MIXPEEK_TOTAL_SHARDS"]["value"]
        ).shard
        for ordinal in range(replicas)
    ]
    assert shards == list(range(replicas))


def test_sharding_changes_nothing_else_in_the_pod() -> None:
    (deployment,) = kind(render(EVERYTHING_ON), "Deployment")
    (statefulset,) = kind(render(SHARDED), "StatefulSet")
    pod, sharded_pod = deployment["spec"]["template"], statefulset["spec"]["template"]
    (exporter,) = sharded_pod["spec"]["containers"]
    exporter["env"] = [
        e for e in exporter["env"] if e["name"] not in ("MIXPEEK_TOTAL_SHARDS", "MIXPEEK_POD_NAME")
    ]
    assert sharded_pod == pod
    assert deployment["spec"]["selector"] == statefulset["spec"]["selector"]
    # And the Deployment mode (the default) has no sharding variables.
    assert not {"MIXPEEK_TOTAL_SHARDS", "MIXPEEK_POD_NAME", "MIXPEEK_SHARD"} & set(env(container(render())))


# Sidecar


APP_DEPLOYMENT = """\
{{- $exporter := dict "Values" .Values.mixpeekExporter "Release" .Release }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-app
spec:
  replicas: 3
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: app
          image: registry.example.com/shop:1.0
        {{- include "mixpeek-exporter.sidecar" $exporter | nindent 8 }}
      volumes:
        {{- include "mixpeek-exporter.sidecarVolumes" $exporter | nindent 8 }}
"""


def app_chart(tmp_path: Path) -> Path:
    """An application chart that depends on this one (alias mixpeekExporter) and adds the sidecar, as the
    README shows."""
    chart = tmp_path / "shop"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\ndependencies:\n"
        "  - name: mixpeek-exporter\n    version: 0.1.0\n    alias: mixpeekExporter\n"
    )
    (chart / "values.yaml").write_text(
        "mixpeekExporter:\n  deployment:\n    enabled: false\n  apiKey:\n    existingSecret: mixpeek\n"
        "  mixpeek:\n    namespaces: [shop]\n"
    )
    (chart / "templates" / "deployment.yaml").write_text(APP_DEPLOYMENT)
    shutil.copytree(CHART, chart / "charts" / "mixpeek-exporter", symlinks=False)
    return chart


def test_the_sidecar_template_adds_the_exporter_to_another_charts_pod(tmp_path: Path) -> None:
    docs = render(chart=app_chart(tmp_path))
    assert [doc["kind"] for doc in docs] == ["Deployment"]  # the exporter's own Deployment is off
    validate(docs)
    pod = docs[0]["spec"]["template"]["spec"]
    app, sidecar = pod["containers"]
    assert app["name"] == "app" and sidecar["name"] == "mixpeek-exporter"
    assert env(sidecar)["MIXPEEK_NAMESPACES"] == "shop"
    assert env(sidecar)["MIXPEEK_API_KEY_FILE"] == "/etc/mixpeek/api-key"
    # The application's readiness never waits on the Mixpeek API.
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["volumes"] == [
        {
            "name": "mixpeek-api-key",
            "secret": {"secretName": "mixpeek", "items": [{"key": "api-key", "path": "api-key"}]},
        }
    ]


def shown_in(example: Any, rendered: Any, where: str = "") -> None:
    """Every field the example shows has the rendered value (the example may leave defaults out); lists of
    named items (env, ports, volumes) are matched by name."""
    if isinstance(example, dict):
        assert isinstance(rendered, dict), where
        for key, value in example.items():
            assert key in rendered, f"{where}.{key} is not rendered"
            shown_in(value, rendered[key], f"{where}.{key}")
    elif isinstance(example, list) and all(isinstance(item, dict) and "name" in item for item in example):
        by_name = {item["name"]: item for item in rendered}
        for item in example:
            assert item["name"] in by_name, f"{where}[{item['name']}] is not rendered"
            shown_in(item, by_name[item["name"]], f"{where}[{item['name']}]")
    else:
        assert example == rendered, f"{where}: README shows {example!r}, the chart renders {rendered!r}"


def test_the_readme_sidecar_example_is_what_the_template_renders(tmp_path: Path) -> None:
    """The README's plain pod spec (for users without Helm) cannot drift from the chart's sidecar template."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- sidecar-example -->\n```yaml\n(.*?)```", readme, re.S)
    assert match, "README lacks the sidecar example"
    example = yaml.safe_load(match.group(1))
    kubernetes_validate.validate(example, KUBE_VERSIONS[-1], strict=True)
    pod = render(chart=app_chart(tmp_path))[0]["spec"]["template"]["spec"]
    shown_in(example["spec"]["containers"][1], pod["containers"][1], "sidecar")
    shown_in(example["spec"]["volumes"], pod["volumes"], "volumes")

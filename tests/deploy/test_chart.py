"""The Helm chart, checked by Helm's own engine (helm-python-sdk: lint, template, values.schema.json), and
every rendered manifest validated offline: built-in kinds against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail), ServiceMonitor and PrometheusRule against prometheus-operator's CRD schemas.

Not verified here (no cluster can run on these machines): admission by a real API server, that the pod starts
from the published image, RBAC and the operator actually picking the ServiceMonitor/PrometheusRule up.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from support import CRDS, REPO, ExporterProcess, deploy_module, self_signed_certificate, wait_until

from exporter.config import ConfigError, Settings, env_name, load_settings

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

CHART = REPO / "deploy" / "helm" / "mixpeek-exporter"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.25", kubernetes_validate.latest_version())
# A bcrypt hash (of "s3cret"), as webConfig.basicAuthUsers takes.
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
SCRAPE_AUTH = {
    "username": {"name": "mixpeek-scrape", "key": "username"},
    "password": {"name": "mixpeek-scrape", "key": "password"},
}
# TLS, basic auth and response headers as the chart README shows them.
SECURED: dict[str, Any] = {
    "webConfig": {
        "tls": {"enabled": True, "secretName": "mx-tls", "minVersion": "TLS13"},
        "basicAuthUsers": {"prometheus": HASH},
        "httpHeaders": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"},
    },
    "serviceMonitor": {
        "enabled": True,
        "tlsConfig": {
            "ca": {"secret": {"name": "mx-tls", "key": "ca.crt"}},
            "serverName": "mx.monitoring.svc",
        },
        "basicAuth": SCRAPE_AUTH,
    },
}
EVERYTHING_ON: dict[str, Any] = {
    "replicaCount": 2,
    "revisionHistoryLimit": 3,
    "commonLabels": {"cost-centre": "observability"},
    "global": {"imageRegistry": "mirror.example.com"},
    "webConfig": SECURED["webConfig"],
    "serviceAccount": {
        "annotations": {"iam.gke.io/gcp-service-account": "mx@example.iam.gserviceaccount.com"}
    },
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "egress": {"extra": [{"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"port": 3128}]}]},
    },
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "ca-bundle"}}],
    "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/extra", "readOnly": True}],
    "initContainers": [{"name": "wait", "image": "registry.example.com/wait:1.0"}],
    "extraContainers": [{"name": "proxy", "image": "registry.example.com/proxy:1.0"}],
    "apiKey": {"value": "sk_chart_test"},
    "mixpeek": {
        "namespaces": ["prod", "staging"],
        "histogramBuckets": [1, 10, 60],
        "maxRequestsPerSecond": 5,
    },
    "stateFile": {"enabled": True},
    "serviceMonitor": {
        **SECURED["serviceMonitor"],
        "labels": {"release": "kube-prometheus-stack"},
        "metricRelabelings": [{"action": "drop", "regex": "mixpeek_exporter_tracked_tasks"}],
        "sampleLimit": 20000,
        "targetLabels": ["team"],
        "jobLabel": "app.kubernetes.io/name",
        "namespace": "prometheus",
    },
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "namespace": "prometheus",
        "additionalRules": [
            {
                "alert": "MixpeekShopTasksFailing",
                "expr": 'max by (mixpeek_namespace) (mixpeek_up{mixpeek_namespace="shop"}) == 0',
                "for": "5m",
                "labels": {"severity": "page"},
                "annotations": {"summary": "{{ $labels.mixpeek_namespace }} is not polled"},
            }
        ],
    },
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
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def kind(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == name]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kind(docs, "Deployment")
    return exporter_in(deployment["spec"]["template"]["spec"])


def exporter_in(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The exporter's container of a pod spec (extraContainers may run beside it)."""
    exporters: list[dict[str, Any]] = [c for c in pod_spec["containers"] if c["name"] == "mixpeek-exporter"]
    (exporter,) = exporters
    return exporter


def env(container_spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container_spec["env"]}


def crd_schema(plural: str) -> dict[str, Any]:
    if not CRDS.is_dir():
        pytest.skip(f"prometheus-operator CRDs not found in {CRDS}")
    crd = yaml.safe_load((CRDS / f"monitoring.coreos.com_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = strict(version["schema"]["openAPIV3Schema"])
    return schema


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
        ({"serviceMonitor": {"honorLabels": True}}, "additional properties 'honorLabels' not allowed"),
        (
            {"webConfig": {"basicAuthUsers": {"prometheus": "s3cret"}}},
            "at '/webConfig/basicAuthUsers/prometheus'",
        ),
        ({"webConfig": {"httpServerConfig": {}}}, "additional properties 'httpServerConfig' not allowed"),
        (
            {"webConfig": {"httpHeaders": {"X-Frame-Options": "allow"}}},
            "at '/webConfig/httpHeaders/X-Frame-Options'",
        ),
        ({"webConfig": {"httpHeaders": {"Server": "x"}}}, "additional properties 'Server' not allowed"),
        ({"webConfig": {"tls": {"minVersion": "SSL3"}}}, "at '/webConfig/tls/minVersion'"),
        ({"serviceMonitor": {"scheme": "ftp"}}, "at '/serviceMonitor/scheme'"),
        ({"serviceMonitor": {"basicAuth": {"username": {"name": "s"}}}}, "at '/serviceMonitor/basicAuth"),
        (
            {"networkPolicy": {"egress": {"apiCIDRs": ["api.mixpeek.com"]}}},
            "at '/networkPolicy/egress/apiCIDRs/0'",
        ),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "at '/podDisruptionBudget/maxUnavailable'"),
        ({"namespaceOverride": "Monitoring"}, "at '/namespaceOverride'"),
        (
            {"prometheusRule": {"additionalRules": [{"expr": "up == 0"}]}},
            "at '/prometheusRule/additionalRules/0'",
        ),
        ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "at '/topologySpreadConstraints/0'"),
        ({"serviceAccount": {"automount": "no"}}, "at '/serviceAccount/automount'"),
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
    # The Pod is the `helm test` hook.
    assert sorted(doc["kind"] for doc in docs) == ["Deployment", "Pod", "Service", "ServiceAccount"]
    validate(docs)
    variables = env(container(docs))
    # No key given: the pod fails closed at start ("no API key"; NOTES say so), never a silent demo.
    assert "MIXPEEK_API_KEY_FILE" not in variables
    assert variables["MIXPEEK_DEMO"] == "false"
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="no API key"):
        load_settings()


def test_everything_on_renders_valid_manifests_and_custom_resources() -> None:
    docs = render(EVERYTHING_ON)
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Secret",
        "Secret",
        "Service",
        "ServiceAccount",
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
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
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


def test_the_service_monitor_scrapes_as_configured_without_honor_labels() -> None:
    """The exporter's namespace label is mixpeek_namespace: the operator's target labels no longer collide."""
    (monitor,) = kind(render(EVERYTHING_ON), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert "honorLabels" not in endpoint
    assert endpoint["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["monitoring"]}  # where the exporter runs
    assert monitor["spec"]["sampleLimit"] == 20000
    assert monitor["spec"]["targetLabels"] == ["team"]
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert endpoint["scheme"] == "https"  # webConfig.tls.enabled
    assert endpoint["tlsConfig"] == SECURED["serviceMonitor"]["tlsConfig"]
    assert endpoint["basicAuth"] == SCRAPE_AUTH
    (plain,) = kind(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    (endpoint,) = plain["spec"]["endpoints"]
    assert endpoint["scheme"] == "http"
    assert "tlsConfig" not in endpoint
    assert "basicAuth" not in endpoint
    assert not {"sampleLimit", "targetLabels", "jobLabel"} & set(plain["spec"])
    assert plain["metadata"]["namespace"] == "monitoring"


def test_the_prometheus_rule_carries_exactly_the_rules_file() -> None:
    """One source: deploy/prometheus/rules.yaml is the chart's rules rendered with the default thresholds."""
    (rule,) = kind(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    rules_file = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == rules_file
    build = deploy_module("deploy/prometheus/build.py")
    assert build.HEADER + build.render_rules() == (REPO / "deploy" / "prometheus" / "rules.yaml").read_text()


def alert_rules(prometheus_rule: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerting rules of a rendered PrometheusRule (the recording rules left out)."""
    return [r for group in prometheus_rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def test_alert_thresholds_are_values() -> None:
    alerts = {"failedSpike": {"window": "5m", "minFailures": 50, "minShare": 0.5, "severity": "warning"}}
    (rule,) = kind(render({"prometheusRule": {"enabled": True}, "alerts": alerts}), "PrometheusRule")
    (spike,) = [r for r in alert_rules(rule) if r["alert"] == "MixpeekTasksFailedSpike"]
    assert "[5m]" in spike["expr"]
    assert ">= 50" in spike["expr"]
    assert ">= 0.5" in spike["expr"]
    assert spike["labels"]["severity"] == "warning"


def test_batch_alert_thresholds_are_values() -> None:
    alerts = {
        "batchesFailed": {"window": "6h", "minFailures": 7, "severity": "critical"},
        "batchObjectsFailureRatio": {"window": "3h", "maxRatio": 0.02, "minObjects": 5000},
        "batchesStuckQueued": {"maxAgeSeconds": 600, "for": "1m"},
        "batchesStuckRunning": {"enabled": False},
    }
    (rule,) = kind(render({"prometheusRule": {"enabled": True}, "alerts": alerts}), "PrometheusRule")
    rules = {r["alert"]: r for r in alert_rules(rule)}
    failed = rules["MixpeekBatchesFailed"]
    assert "[6h]" in failed["expr"]
    assert ">= 7" in failed["expr"]
    assert failed["labels"]["severity"] == "critical"
    objects = rules["MixpeekBatchObjectsFailureRatioHigh"]["expr"]
    assert "[3h]" in objects
    assert "> 0.02" in objects
    assert ">= 5000" in objects
    queued = rules["MixpeekBatchesStuckQueued"]
    assert "> 600" in queued["expr"]
    assert queued["for"] == "1m"
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


# TLS and basic auth (webConfig), and what follows them


def secret_data(doc: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in doc["data"].items()}


def mount_files(docs: list[dict[str, Any]], root: Path, outside: dict[str, dict[str, bytes]]) -> None:
    """Write what the exporter's container would see of its Secret volumes under `root`: the chart's Secrets
    as rendered, the others (the TLS Secret, the scrape credentials) from `outside`."""
    secrets = {**outside, **{doc["metadata"]["name"]: secret_data(doc) for doc in kind(docs, "Secret")}}
    (deployment,) = kind(docs, "Deployment")
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in container(docs)["volumeMounts"]:
        source = volumes[mount["name"]]["secret"]
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True)
        for item in source["items"]:
            (folder / item["path"]).write_bytes(secrets[source["secretName"]][item["key"]])


def resolved_env(spec: dict[str, Any], secrets: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """A container's environment with its secretKeyRefs read, as the kubelet does."""
    result = {}
    for item in spec["env"]:
        if "value" in item:
            result[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            result[item["name"]] = secrets[ref["name"]][ref["key"]].decode()
    return result


def run_script(script: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The `helm test` container's `python -c <script>`, run by this interpreter (prometheus_client too)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("values", [{}, SECURED], ids=["plain", "tls-and-basic-auth"])
def test_the_exporter_serves_the_chart_web_config_and_the_probes_and_helm_test_pass(
    values: dict[str, Any], tmp_path: Path
) -> None:
    """The real exporter process reads the web config Secret the chart renders, mounted where the chart mounts
    it; the kubelet's probes (no credentials) pass, and the `helm test` pod's own script scrapes it."""
    cert, key = self_signed_certificate(tmp_path)
    outside = {
        "mx-tls": {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()},
        "mixpeek-scrape": {"username": b"prometheus", "password": b"s3cret"},
    }
    docs = render({**values, "mixpeek": {"demo": True}})
    root = tmp_path / "pod"
    variables = env(container(docs))
    environment = {}
    if values:
        mount_files(docs, root, outside)
        web_config = root / variables["MIXPEEK_WEB_CONFIG_FILE"].lstrip("/")
        config = yaml.safe_load(web_config.read_text())
        assert set(config) == {"tls_server_config", "basic_auth_users", "http_server_config"}
        for name in ("cert_file", "key_file"):  # absolute paths inside the pod; here under root
            config["tls_server_config"][name] = str(root / config["tls_server_config"][name].lstrip("/"))
        web_config.write_text(yaml.safe_dump(config))
        environment["MIXPEEK_WEB_CONFIG_FILE"] = str(web_config)
    else:
        assert "MIXPEEK_WEB_CONFIG_FILE" not in variables
    scheme = "https" if values else "http"
    exporter = ExporterProcess("--demo", env=environment)
    try:
        exporter.wait_serving()
        base = f"{scheme}://127.0.0.1:{exporter.port}"
        with httpx.Client(base_url=base, verify=False, timeout=10) as kubelet:  # the kubelet verifies nothing
            for probe in ("livenessProbe", "readinessProbe"):
                get = container(docs)[probe]["httpGet"]
                assert get.get("scheme", "HTTP") == scheme.upper()
                path = get["path"]

                def answers(path: str = path) -> bool:
                    return kubelet.get(path).status_code == 200

                wait_until(answers, 30, f"{probe} {path}")
            refused = kubelet.get("/metrics")
            assert refused.status_code == (401 if values else 200)
            assert refused.headers.get("X-Frame-Options") == ("deny" if values else None)
        (test_pod,) = kind(docs, "Pod")
        (scrape,) = test_pod["spec"]["containers"]
        assert scrape["image"] == container(docs)["image"]
        assert scrape["command"][:2] == ["python", "-c"]
        test_env = resolved_env(scrape, outside)
        assert test_env["SCRAPE_URL"] == f"{scheme}://mx-mixpeek-exporter.monitoring.svc:9877/metrics"
        test_env["SCRAPE_URL"] = f"{base}/metrics"  # the Service's address, here
        passed = run_script(scrape["command"][2], test_env)
        assert passed.returncode == 0, passed.stderr
        assert "mixpeek_exporter_build_info among them" in passed.stdout
        if values:
            wrong = {**test_env, "SCRAPE_PASSWORD": "wrong"}
            failed = run_script(scrape["command"][2], wrong)
            assert failed.returncode == 1
            assert "401" in failed.stderr
    finally:
        exporter.terminate()


def test_the_web_config_follows_the_values() -> None:
    docs = render(SECURED)
    (secret,) = kind(docs, "Secret")
    assert secret["metadata"]["name"] == "mx-mixpeek-exporter-web-config"
    config = yaml.safe_load(secret_data(secret)["web-config.yml"])
    assert config == {
        "tls_server_config": {
            "cert_file": "/etc/mixpeek-exporter/tls/tls.crt",
            "key_file": "/etc/mixpeek-exporter/tls/tls.key",
            "min_version": "TLS13",
        },
        "basic_auth_users": {"prometheus": HASH},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny"}},
    }
    pod = kind(docs, "Deployment")[0]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    assert len(pod["metadata"]["annotations"]["checksum/web-config"]) == 64
    assert {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"]} == {
        "mixpeek-web-config": "mx-mixpeek-exporter-web-config",
        "mixpeek-tls": "mx-tls",
    }
    validate(docs)
    # Basic auth alone: plain HTTP probes, no TLS volume.
    docs = render({"webConfig": {"basicAuthUsers": {"prometheus": HASH}}, "tests": {"enabled": False}})
    exporter = container(docs)
    assert "scheme" not in exporter["livenessProbe"]["httpGet"]
    assert [m["name"] for m in exporter["volumeMounts"]] == ["mixpeek-web-config"]
    assert set(yaml.safe_load(secret_data(kind(docs, "Secret")[0])["web-config.yml"])) == {"basic_auth_users"}


def test_an_existing_web_config_secret_is_mounted_and_none_created() -> None:
    values = {
        "webConfig": {"existingSecret": "mx-web", "existingSecretKey": "web.yml", "tls": {"enabled": True}},
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "mx-certs"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": True}],
    }
    docs = render(values)
    assert kind(docs, "Secret") == []
    exporter = container(docs)
    assert env(exporter)["MIXPEEK_WEB_CONFIG_FILE"] == "/etc/mixpeek-exporter/web/web.yml"
    assert exporter["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    pod = kind(docs, "Deployment")[0]["spec"]["template"]
    assert "checksum/web-config" not in pod["metadata"]["annotations"]  # the chart cannot see its content
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["mixpeek-web-config", "certs"]
    assert pod["spec"]["volumes"][0]["secret"]["items"] == [{"key": "web.yml", "path": "web.yml"}]
    validate(docs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webConfig": {"tls": {"enabled": True}}}, "webConfig.tls.enabled needs webConfig.tls.secretName"),
        (
            {"webConfig": {"tls": {"enabled": True, "secretName": "t"}}, "serviceMonitor": {"enabled": True}},
            "webConfig.tls.enabled needs serviceMonitor.tlsConfig",
        ),
        (
            {"webConfig": {"basicAuthUsers": {"p": HASH}}, "serviceMonitor": {"enabled": True}},
            "webConfig.basicAuthUsers needs serviceMonitor.basicAuth",
        ),
        ({"webConfig": {"basicAuthUsers": {"p": HASH}}}, "the helm test scrapes with its credentials"),
    ],
)
def test_a_web_config_that_cannot_be_scraped_fails_with_the_fix_named(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


# The pod and its surroundings


def test_the_pods_run_as_their_own_service_account_without_a_token() -> None:
    docs = render(EVERYTHING_ON)
    (account,) = kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "mx-mixpeek-exporter"
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == EVERYTHING_ON["serviceAccount"]["annotations"]
    pod = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mx-mixpeek-exporter"
    assert pod["automountServiceAccountToken"] is False
    docs = render({"serviceAccount": {"create": False, "name": "shared", "automount": True}})
    assert kind(docs, "ServiceAccount") == []
    pod = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shared"
    assert pod["automountServiceAccountToken"] is True
    pod = kind(render({"serviceAccount": {"create": False}}), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"


def test_the_image_registry_and_a_parent_charts_global_registry() -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container(render({"image": {"registry": ""}}))["image"] == f"mixpeek/mixpeek-exporter:{version}"
    docs = render({"global": {"imageRegistry": "mirror.example.com"}, "image": {"registry": "quay.io"}})
    assert container(docs)["image"] == f"mirror.example.com/mixpeek/mixpeek-exporter:{version}"
    assert kind(docs, "Pod")[0]["spec"]["containers"][0]["image"] == container(docs)["image"]


def test_namespace_override_moves_every_namespaced_resource() -> None:
    values = {**EVERYTHING_ON, "namespaceOverride": "exporters"}
    values["serviceMonitor"] = {**values["serviceMonitor"], "namespace": ""}
    values["prometheusRule"] = {**values["prometheusRule"], "namespace": ""}
    docs = render(values)
    assert {doc["metadata"]["namespace"] for doc in docs} == {"exporters"}
    (monitor,) = kind(docs, "ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["exporters"]}
    assert kind(docs, "Pod")[0]["spec"]["containers"][0]["env"][0]["value"].startswith(
        "https://mx-mixpeek-exporter.exporters.svc:"
    )


def test_common_labels_are_on_every_resource_and_pod_but_not_in_selectors() -> None:
    docs = render(EVERYTHING_ON)
    for doc in docs:
        assert doc["metadata"]["labels"]["cost-centre"] == "observability", doc["kind"]
    (deployment,) = kind(docs, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"]["cost-centre"] == "observability"
    assert "cost-centre" not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["revisionHistoryLimit"] == 3


def test_the_disruption_budget_selects_the_exporter_pods() -> None:
    docs = render(EVERYTHING_ON)
    (budget,) = kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"] == kind(docs, "Deployment")[0]["spec"]["selector"]
    (budget,) = kind(
        render({"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}}), "PodDisruptionBudget"
    )
    assert budget["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in budget["spec"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_network_policy_lets_in_the_scraper_and_out_the_api_and_dns() -> None:
    docs = render(EVERYTHING_ON)
    (policy,) = kind(docs, "NetworkPolicy")
    pod_labels = kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    scraper, test_peer = ingress["from"]
    assert scraper == EVERYTHING_ON["networkPolicy"]["ingressFrom"][0]
    test_labels = kind(docs, "Pod")[0]["metadata"]["labels"]
    assert selects(test_peer["podSelector"]["matchLabels"], test_labels)  # helm test can reach the pods
    api, dns, proxy = policy["spec"]["egress"]
    assert api == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert proxy == EVERYTHING_ON["networkPolicy"]["egress"]["extra"][0]
    # No ingressFrom: any source, on the metrics port only.
    (open_policy,) = kind(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert open_policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]


def test_the_helm_test_pod_is_a_hook_that_no_selector_of_the_chart_picks() -> None:
    docs = render(EVERYTHING_ON)
    (test_pod,) = kind(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["restartPolicy"] == "Never"
    labels = test_pod["metadata"]["labels"]
    assert not selects(kind(docs, "Service")[0]["spec"]["selector"], labels)
    assert not selects(kind(docs, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"], labels)
    assert not selects(kind(docs, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"], labels)
    assert kind(render({"tests": {"enabled": False}}), "Pod") == []


def test_pod_extras_are_rendered_where_kubernetes_expects_them() -> None:
    docs = render(EVERYTHING_ON)
    pod = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mixpeek-exporter", "proxy"]
    assert pod["initContainers"] == EVERYTHING_ON["initContainers"]
    assert pod["volumes"][-1] == EVERYTHING_ON["extraVolumes"][0]
    assert container(docs)["volumeMounts"][-1] == EVERYTHING_ON["extraVolumeMounts"][0]
    (spread,) = pod["topologySpreadConstraints"]
    # Left out, the labelSelector is the pods' own.
    assert spread["labelSelector"] == {
        "matchLabels": kind(docs, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    }


def test_additional_rules_come_in_their_own_group_after_the_rules_file() -> None:
    values = {
        key: EVERYTHING_ON[key] for key in ("prometheusRule",)
    }  # default alert labels: the rules file's
    (rule,) = kind(render(values), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "prometheus"
    *ours, theirs = rule["spec"]["groups"]
    rules_file = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert ours == rules_file["groups"]
    assert theirs == {
        "name": "mixpeek-exporter-additional",
        "rules": EVERYTHING_ON["prometheusRule"]["additionalRules"],
    }


# The README's values table


def test_the_chart_readme_values_table_is_current() -> None:
    values_table = deploy_module("deploy/helm/values_table.py")
    readme = (CHART / "README.md").read_text()
    assert values_table.updated_readme(readme, (CHART / "values.yaml").read_text()) == readme, (
        "run python deploy/helm/values_table.py"
    )
    assert values_table.main(["--check"]) == 0


def test_the_values_table_documents_every_value_and_says_when_one_is_not() -> None:
    values_table = deploy_module("deploy/helm/values_table.py")
    rows = {row.key: row for row in values_table.rows((CHART / "values.yaml").read_text())}
    assert rows["webConfig.tls.enabled"].type == "bool"
    assert rows["webConfig.tls.enabled"].default == "false"
    assert rows["serviceMonitor.interval"].default == '"30s"'
    with pytest.raises(ValueError, match=r"no `# --` comment describes undocumented"):
        values_table.rows("# -- documented\ndocumented: 1\nundocumented: 2\n")
    with pytest.raises(
        ValueError, match=r"values\.yaml:2: the `# --` comment above is not right above a key"
    ):
        values_table.rows("# -- lost\n\nkey: 1\n")


# Sharding: a StatefulSet


def test_sharding_renders_a_valid_statefulset_instead_of_the_deployment() -> None:
    docs = render(SHARDED)
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Secret",
        "Secret",
        "Service",
        "ServiceAccount",
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
    exporter = exporter_in(statefulset["spec"]["template"]["spec"])
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
    exporter = exporter_in(sharded_pod["spec"])
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
    """An application chart that depends on this one (alias mixpeekExporter) and adds the sidecar, as
    docs/deploy.md shows."""
    chart = tmp_path / "shop"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\ndependencies:\n"
        "  - name: mixpeek-exporter\n    version: 0.2.0\n    alias: mixpeekExporter\n"
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
    assert app["name"] == "app"
    assert sidecar["name"] == "mixpeek-exporter"
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
        assert example == rendered, f"{where}: the docs show {example!r}, the chart renders {rendered!r}"


def test_the_deploy_doc_sidecar_example_is_what_the_template_renders(tmp_path: Path) -> None:
    """docs/deploy.md's plain pod spec (for users without Helm) cannot drift from the sidecar template."""
    readme = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(r"<!-- sidecar-example -->\n```yaml\n(.*?)```", readme, re.S)
    assert match, "docs/deploy.md lacks the sidecar example"
    example = yaml.safe_load(match.group(1))
    kubernetes_validate.validate(example, KUBE_VERSIONS[-1], strict=True)
    pod = render(chart=app_chart(tmp_path))[0]["spec"]["template"]["spec"]
    shown_in(example["spec"]["containers"][1], pod["containers"][1], "sidecar")
    shown_in(example["spec"]["volumes"], pod["volumes"], "volumes")

"""Deployment artifacts (issue 15): the Helm chart (deploy/helm/ragraft), the compose
file, the Dockerfile and the chart's preStop hook (deploy/kubernetes/prestop.py).

* The chart is rendered by tests/helm_render.py (helm itself cannot be installed
  here) with its default values and with overrides that take every optional branch;
  every object is validated against the Kubernetes JSON schemas of kubernetes-validate
  (strict: an unknown field is an error) for the oldest and the newest Kubernetes the
  chart is meant for.  The ServiceMonitor is a CRD, which those schemas do not have:
  its fields are checked here against the Service it selects.
* The environment each pod of the StatefulSet and each compose service gives its node
  is loaded by the project's own node.config.load, as `ragraft node` loads it: the
  node id, the host the others dial, whether it joins, its directories.
* The init container's script and the compose `init` command are run for real on a
  bundle made by the project's own code; the Dockerfile's and compose's health checks
  against a local HTTP server; the preStop hook against fake Kubernetes and ragraft
  APIs (http.server threads on 127.0.0.1).
"""

from __future__ import annotations

import ast
import functools
import http.server
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import kubernetes_validate
import pytest
import yaml

from node.cli.main import _join_from_env
from node.config import _ENV_PORTS, load
from node.secrets import ClusterSecrets, node_key, read_bundle, write_bundle
from tests.helm_render import TemplateError, TemplateFail, manifests, render_chart

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ragraft"
PRESTOP = ROOT / "deploy" / "kubernetes" / "prestop.py"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RELEASE, NAMESPACE = "rel", "prod"
PASSWORD = "deploy-test-password"

# The Kubernetes versions the chart is validated for: a release still in wide use
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

SCALED = {"replicas": 5, "serviceMonitor": {"enabled": False}, "existingSecret": "kb-secrets"}
# Every optional branch of the templates taken at least once.
CUSTOM = {
    "fullnameOverride": "kb",
    "replicas": 2,
    "cluster": {"name": "kb-prod", "initialMembers": 1, "domain": "k8s.internal"},
    "image": {"repository": "registry.example/ragraft", "tag": "0.1.0-rc1"},
    "imagePullSecrets": [{"name": "regcred"}],
    "persistence": {"storageClass": "fast-ssd", "size": "50Gi"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["rag"]}]}
                ]
            }
        }
    },
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "extraEnv": [{"name": "RAGRAFT_LOAD_MODELS", "value": "0"}],
    "dashboardOrigins": ["ragraft.example.com:443", "dash.example.com:443"],
    "podAnnotations": {"example.com/team": "search"},
    "service": {"annotations": {"example.com/lb": "internal"}},
    "serviceMonitor": {"labels": {"release": "prometheus"}},
    "grafanaDashboard": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
}
VARIANTS = {"default": {}, "scaled": SCALED, "custom": CUSTOM}


# ------------------------------------------------------------------ chart helpers


def public_paths() -> set[str]:
    """node/http/auth.py's PUBLIC_PATHS (the routes served without a token), read from
    the source: the probes and Prometheus send no credentials."""
    tree = ast.parse((ROOT / "node" / "http" / "auth.py").read_text())
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PUBLIC_PATHS" for t in statement.targets
        ):
            call = statement.value
            assert isinstance(call, ast.Call) and call.args
            return set(ast.literal_eval(call.args[0]))
    raise AssertionError("node/http/auth.py has no PUBLIC_PATHS")


@functools.cache
def _rendered(key: str) -> dict[str, str]:
    return render_chart(CHART, VARIANTS[key], release=RELEASE, namespace=NAMESPACE)


def objects(variant: str = "default") -> list[dict[str, Any]]:
    return manifests(_rendered(variant))


def one(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (
            component is None
            or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        )
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects ({component})"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "StatefulSet")["spec"]["template"]["spec"]


def node_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(objs)["containers"]
    return container


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(
    container: dict[str, Any], pod: str, secrets: dict[tuple[str, str], str]
) -> dict[str, str]:
    """The environment Kubernetes gives the container of pod `pod`: the downward API's
    fields, the Secret's keys, and $(VAR) references to variables defined before."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = _REF.sub(
                lambda m: (
                    "$"
                    if m.group() == "$$"
                    else env.get(m.group(1), m.group())  # undefined: left as it is
                ),
                item["value"],
            )
        elif "fieldRef" in item["valueFrom"]:
            value = {"metadata.name": pod, "metadata.namespace": NAMESPACE}[
                item["valueFrom"]["fieldRef"]["fieldPath"]
            ]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets[(ref["name"], ref["key"])]
        env[item["name"]] = value
    return env


# ------------------------------------------------------------------ the chart


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_chart_renders_and_every_object_validates(variant: str, version: str) -> None:
    objs = objects(variant)
    kinds = sorted(o["kind"] for o in objs)
    expected = {"ConfigMap", "PodDisruptionBudget", "Role", "RoleBinding", "Service"}
    expected |= {"ServiceAccount", "ServiceMonitor", "StatefulSet"}
    if variant == "scaled":
        expected.discard("ServiceMonitor")
    if variant == "custom":
        expected -= {"ConfigMap", "PodDisruptionBudget"}
    assert set(kinds) == expected
    assert kinds.count("Service") == 2
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"two objects of one kind and name: {names}"
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_the_service_monitor_scrapes_every_pod checks it
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_validation_catches_mistakes() -> None:
    statefulset = one(objects(), "StatefulSet")
    version = K8S_VERSIONS[-1]
    typo = json.loads(json.dumps(statefulset))
    typo["spec"]["podManagmentPolicy"] = typo["spec"].pop("podManagementPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)
    wrong = json.loads(json.dumps(statefulset))
    wrong["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, version, strict=True)
    monitor = one(objects(), "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, version, strict=True)


def test_the_statefulset_gives_stable_identities_and_starts_all_pods_together() -> None:
    objs = objects()
    sts = one(objs, "StatefulSet")
    headless = one(objs, "Service", "peers")
    client = one(objs, "Service", "client")
    assert sts["metadata"]["name"] == f"{RELEASE}-ragraft"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    defaults = {key.removesuffix("_port"): port for key, (_, port) in _ENV_PORTS.items()}
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == defaults
    assert {p["name"]: p["port"] for p in client["spec"]["ports"]} == {
        "api": defaults["api"],
        "dashboard": defaults["dashboard"],
    }
    assert "clusterIP" not in client["spec"] and "publishNotReadyAddresses" not in client["spec"]
    container = node_container(objs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == defaults
    for service in (headless, client):
        assert all(p["targetPort"] in defaults for p in service["spec"]["ports"])
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (
        sts["spec"]["selector"]["matchLabels"],
        headless["spec"]["selector"],
        client["spec"]["selector"],
    ):
        assert selector.items() <= pod_labels.items()
    env = {e["name"]: e for e in container["env"]}
    assert env["RAGRAFT_NODE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["args"] == ["node"]


def test_the_probes_use_the_unauthenticated_health_routes() -> None:
    container = node_container(objects())
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")
    }
    assert probes["readiness"] == {"path": "/readyz", "port": "api"}
    assert probes["liveness"] == {"path": "/healthz", "port": "api"}
    assert probes["startup"] == {"path": "/healthz", "port": "api"}
    assert {"/healthz", "/readyz", "/metrics"} <= public_paths()  # kubelet sends no token
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # models load


def test_disruptions_take_one_pod_at_a_time_and_pods_spread_over_machines() -> None:
    objs = objects()
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (term,) = pod_spec(objs)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    # affinity given in values replaces the default one
    assert pod_spec(objects("custom"))["affinity"] == CUSTOM["affinity"]


def test_data_and_secrets_live_on_the_pods_volume_as_a_non_root_user() -> None:
    objs = objects()
    sts = one(objs, "StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]
    custom_claim = one(objects("custom"), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert custom_claim["spec"]["storageClassName"] == "fast-ssd"
    assert custom_claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    spec = pod_spec(objs)
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == 10001
    assert dockerfile_user() == "10001:10001"
    env = {e["name"]: e.get("value") for e in node_container(objs)["env"]}
    assert env["RAGRAFT_DATA_DIR"] == "/data"
    assert env["RAGRAFT_SECRETS_DIR"] == "/data/secrets"
    # the Secret itself is mounted only where it is copied from
    assert not any(m["name"] == "cluster-secret" for m in node_container(objs)["volumeMounts"])


def test_a_pod_taken_away_runs_the_prestop_hook_with_the_rights_it_needs() -> None:
    objs = objects()
    sts = one(objs, "StatefulSet")
    spec = pod_spec(objs)
    container = node_container(objs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["python", "/app/deploy/kubernetes/prestop.py"]
    assert ("deploy/kubernetes/prestop.py", command[1]) in dockerfile_copies()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAGRAFT_STATEFULSET"] == sts["metadata"]["name"]
    assert float(env["RAGRAFT_PRESTOP_TIMEOUT_S"]) < spec["terminationGracePeriodSeconds"]
    account = one(objs, "ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    role, binding = one(objs, "Role"), one(objs, "RoleBinding")
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": [sts["metadata"]["name"]],
            "verbs": ["get"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ragraft_nodes_lists_exactly_the_initial_members(variant: str) -> None:
    objs = objects(variant)
    sts = one(objs, "StatefulSet")
    headless = one(objs, "Service", "peers")["metadata"]["name"]
    values = {"cluster": {"initialMembers": 3, "domain": "cluster.local"}, **VARIANTS[variant]}
    initial = values["cluster"]["initialMembers"]
    domain = values["cluster"]["domain"]
    env = {e["name"]: e.get("value") for e in node_container(objs)["env"]}
    listed = [part.split("=", 1) for part in env["RAGRAFT_NODES"].split(",")]
    name = sts["metadata"]["name"]
    assert listed == [
        [f"{name}-{i}", f"{name}-{i}.{headless}.{NAMESPACE}.svc.{domain}"] for i in range(initial)
    ]
    assert env["RAGRAFT_HOST"] == f"$(RAGRAFT_NODE_ID).{headless}.{NAMESPACE}.svc.{domain}"
    client = one(objs, "Service", "client")["metadata"]["name"]
    assert env["RAGRAFT_JOIN"] == f"http://{client}.{NAMESPACE}.svc.{domain}:8100"
    notes = _rendered(variant)["NOTES.txt"]
    assert f"RAGRAFT_NODES={env['RAGRAFT_NODES']} " in notes  # what `ragraft init` is given


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pods_environment_is_accepted_by_the_config_loader(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = objects(variant)
    sts = one(objs, "StatefulSet")
    name = sts["metadata"]["name"]
    replicas = sts["spec"]["replicas"]
    headless = one(objs, "Service", "peers")["metadata"]["name"]
    container = node_container(objs)
    secret = secret_name(objs)
    initial = int(
        next(
            e["value"]
            for e in pod_spec(objs)["initContainers"][0]["env"]
            if e["name"] == "RAGRAFT_INITIAL_MEMBERS"
        )
    )
    first = [f"{name}-{i}" for i in range(initial)]
    for ordinal in range(replicas):
        pod = f"{name}-{ordinal}"
        env = container_env(container, pod, {(secret, "admin-password"): PASSWORD})
        assert "$(" not in "".join(env.values()), env
        config = load(tmp_path / "no-cluster.toml", env=env)  # no file: the environment
        spec = config.node(pod)
        domain = VARIANTS[variant].get("cluster", {}).get("domain", "cluster.local")
        assert spec.host == f"{pod}.{headless}.{NAMESPACE}.svc.{domain}"
        assert spec.join == (ordinal >= initial)
        assert [n.id for n in config.nodes if not n.join] == first
        assert spec.listen_host == "0.0.0.0"
        assert spec.raft_address == f"tcp://{spec.host}:7100"
        assert spec.data_dir == Path("/data") / pod
        assert config.secrets_dir == Path("/data/secrets")
        assert config.security.admin_password == PASSWORD
        assert config.name == VARIANTS[variant].get("cluster", {}).get("name", "ragraft")
        # RAGRAFT_JOIN is set for every pod; only the ones that are not listed follow it
        for key in ("RAGRAFT_JOIN", "RAGRAFT_HOST"):
            monkeypatch.setenv(key, env[key])
        expected_join = env["RAGRAFT_JOIN"] if ordinal >= initial else None
        assert _join_from_env(config, pod) == expected_join


def secret_name(objs: list[dict[str, Any]]) -> str:
    (volume,) = [v for v in pod_spec(objs)["volumes"] if v["name"] == "cluster-secret"]
    return volume["secret"]["secretName"]


def test_the_secret_is_the_existing_one_everywhere_it_is_used() -> None:
    for variant, expected in (("default", f"{RELEASE}-ragraft-secrets"), ("scaled", "kb-secrets")):
        objs = objects(variant)
        assert secret_name(objs) == expected
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in node_container(objs)["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert refs == [{"name": expected, "key": "admin-password"}]
        (init,) = pod_spec(objs)["initContainers"]
        init_env = {e["name"]: e.get("value") for e in init["env"]}
        assert init_env["RAGRAFT_SECRET_NAME"] == expected
        mount = next(m for m in init["volumeMounts"] if m["name"] == "cluster-secret")
        assert mount["readOnly"] is True
        assert mount["mountPath"] == init_env["RAGRAFT_SECRET_SOURCE"]
        notes = _rendered(variant)["NOTES.txt"]
        assert f"create secret generic {expected} " in notes
        assert "--from-literal=admin-password=" in notes and "ragraft init" in notes


def test_the_service_monitor_scrapes_every_pod() -> None:
    objs = objects()
    monitor = one(objs, "ServiceMonitor")
    headless = one(objs, "Service", "peers")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    )
    client = one(objs, "Service", "client")  # not both Services: each pod scraped once
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= client["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "api", "path": "/metrics", "interval": "30s"}
    assert endpoint["port"] in {p["name"] for p in headless["spec"]["ports"]}
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    custom = one(objects("custom"), "ServiceMonitor")
    assert custom["metadata"]["labels"]["release"] == "prometheus"


def test_the_grafana_dashboard_configmap_is_the_projects_dashboard() -> None:
    docs = json.loads((ROOT / "docs" / "grafana" / "ragraft.json").read_text())
    copy = json.loads((CHART / "dashboards" / "ragraft.json").read_text())
    assert copy == docs, "deploy/helm/ragraft/dashboards/ragraft.json differs from docs/grafana"
    configmap = one(objects(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["ragraft.json"]) == docs


def test_fewer_replicas_than_initial_members_is_refused() -> None:
    with pytest.raises(TemplateFail, match="at least cluster.initialMembers"):
        render_chart(CHART, {"replicas": 2}, release=RELEASE, namespace=NAMESPACE)
    with pytest.raises(TemplateFail, match="initialMembers must be at least 1"):
        render_chart(CHART, {"cluster": {"initialMembers": 0}}, release=RELEASE)


def test_the_renderer_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    """A template outside the subset fails instead of rendering something else."""
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("n: 3\nm: {a: 1}\n")

    def render(template: str) -> str:
        (chart / "templates" / "t.yaml").write_text(template)
        return render_chart(chart)["t.yaml"]

    assert render("a:\n  {{- range $i := until (int .Values.n) }} {{ $i }}{{ end }}") == (
        "a: 0 1 2"
    )
    for template, problem in (
        ("{{ range until .Values.n }}x{{ end }}", "expected int"),  # Helm fails too
        ("{{ lower .Values.m }}", "'lower' is outside"),
        ("{{ with .Values.m }}{{ .a }}{{ end }}", "'with' is outside"),
        ("{{ .Values.missing.key }}", "nil pointer"),
        ("{{ .Values.missing }}", "nil value"),
        ("{{ .Values.m }}", "toYaml"),
        ("{{ eq .Values.n 3 }}", "incompatible types"),
        ("{{ if .Values.n }}unclosed", "without end"),
    ):
        with pytest.raises(TemplateError, match=problem):
            render(template)


# ------------------------------------------------------------------ the init container


def init_script(objs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    (init,) = pod_spec(objs)["initContainers"]
    return init["command"], {e["name"]: e.get("value", "") for e in init["env"]}


@pytest.fixture
def made_secret(tmp_path: Path) -> Path:
    """What `kubectl create secret --from-file` of `ragraft init`'s output mounts: the
    bundle and every first member's key, as a Secret volume shows them (0440 files)."""
    made = tmp_path / "made"
    pods = [f"{RELEASE}-ragraft-{i}" for i in range(3)]
    write_bundle(ClusterSecrets.generate("ragraft", pods), made)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for file in made.iterdir():
        (mounted / file.name).write_bytes(file.read_bytes())
        os.chmod(mounted / file.name, 0o440)
    (mounted / "admin-password").write_text(PASSWORD)
    os.chmod(mounted, 0o755)
    return mounted


def run_init(objs: list[dict[str, Any]], pod: str, source: Path, target: Path) -> Any:
    command, env = init_script(objs)
    env = {
        **env,
        "PATH": os.environ["PATH"],
        "RAGRAFT_NODE_ID": pod,
        "RAGRAFT_SECRET_SOURCE": str(source),
        "RAGRAFT_SECRETS_DIR": str(target),
    }
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=30)


def test_the_init_container_gives_each_pod_its_own_private_secrets(
    made_secret: Path, tmp_path: Path
) -> None:
    objs = objects("scaled")  # 5 pods, 3 of them the first members
    first = f"{RELEASE}-ragraft-0"
    target = tmp_path / "pod0" / "secrets"
    done = run_init(objs, first, made_secret, target)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["cluster-secrets.json", f"node-{first}.key"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in target.iterdir())
    # what the node itself then checks and reads (owner-only modes, its own key)
    bundle = read_bundle(target, "ragraft")
    public, _ = node_key(target, first)
    assert bundle.node_keys[first] == public
    again = run_init(objs, first, made_secret, target)  # a restart: the same files again
    assert again.returncode == 0, again.stderr
    assert read_bundle(target, "ragraft").node_keys == bundle.node_keys

    joiner = f"{RELEASE}-ragraft-3"  # not a first member: the bundle only
    target = tmp_path / "pod3" / "secrets"
    done = run_init(objs, joiner, made_secret, target)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in target.iterdir()] == ["cluster-secrets.json"]
    public, _ = node_key(target, joiner, create=True)  # what a joining node does at start
    assert run_init(objs, joiner, made_secret, target).returncode == 0
    assert node_key(target, joiner) == (public, node_key(target, joiner)[1])  # kept


def test_the_init_container_says_what_is_missing(made_secret: Path, tmp_path: Path) -> None:
    objs = objects("scaled")
    first = f"{RELEASE}-ragraft-1"
    (made_secret / f"node-{first}.key").unlink()
    done = run_init(objs, first, made_secret, tmp_path / "a")
    assert done.returncode != 0
    assert f"no node-{first}.key" in done.stderr and "kb-secrets" in done.stderr
    (made_secret / "cluster-secrets.json").unlink()
    done = run_init(objs, f"{RELEASE}-ragraft-4", made_secret, tmp_path / "b")
    assert done.returncode != 0 and "no cluster-secrets.json" in done.stderr


# ------------------------------------------------------------------ compose


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ${VAR}, ${VAR:-default}, ${VAR:?error} and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one_reference(match: re.Match[str]) -> str:
        if match.group() == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        given = env.get(name)
        empty = given is None or (given == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and empty:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        if op is not None and op.endswith("-") and empty:
            return arg
        return given or ""

    if re.search(r"\$(?![${])", value.replace("$$", "")):
        raise AssertionError(f"compose: a bare $ in {value!r} (write $$ or ${{...}})")
    return _INTERPOLATION.sub(one_reference, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, {"RAGRAFT_ADMIN_PASSWORD": PASSWORD} if env is None else env)


NODES = ("n1", "n2", "n3")


def test_compose_runs_init_then_three_nodes_on_named_volumes() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"init", *NODES}
    assert set(doc["volumes"]) == {"secrets", *(f"{n}-data" for n in NODES)}
    init = services["init"]
    assert init["volumes"] == ["secrets:/data/secrets"]
    assert init["restart"] == "no"
    for i, node in enumerate(NODES, start=1):
        service = services[node]
        assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        assert service["restart"] == "unless-stopped"
        assert service["ports"] == [f"810{i}:8100", f"830{i}:8300"]
        # data: its own named volume; the secrets: init's, read-only (the admin password
        # is given, so a node writes nothing there: node/runtime/housekeeping.py)
        assert service["volumes"] == [f"{node}-data:/data", "secrets:/data/secrets:ro"]
        assert service["environment"]["RAGRAFT_ADMIN_PASSWORD"] == PASSWORD
        assert service["image"] == init["image"]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and "/readyz" in test[3]


def test_compose_needs_the_admin_password() -> None:
    with pytest.raises(ValueError, match="RAGRAFT_ADMIN_PASSWORD"):
        compose({})


def test_every_compose_nodes_environment_is_accepted_by_the_config_loader(
    tmp_path: Path,
) -> None:
    services = compose()["services"]
    for i, node in enumerate(NODES, start=1):
        service = services[node]
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["RAGRAFT_NODE_ID"] == node == service["hostname"]
        hosts = dict(part.split("=") for part in env["RAGRAFT_NODES"].split(","))
        assert hosts == {n: n for n in NODES}  # the hosts are the services' names
        config = load(tmp_path / "no-cluster.toml", env=env)
        spec = config.node(node)
        assert (spec.host, spec.join, spec.listen_host) == (node, False, "0.0.0.0")
        published = {p.split(":")[1]: p.split(":")[0] for p in service["ports"]}
        assert spec.public_api_url == f"http://localhost:{published[str(spec.api_port)]}"
        assert spec.public_dashboard_url == (
            f"http://localhost:{published[str(spec.dashboard_port)]}"
        )
        assert spec.api_url == f"http://{node}:8100"  # how the other nodes reach it
        assert spec.data_dir == Path("/data") / node
        assert config.secrets_dir == Path("/data/secrets")
        assert config.security.admin_password == PASSWORD


def test_compose_init_writes_the_secrets_once(tmp_path: Path) -> None:
    init = compose()["services"]["init"]
    assert init["entrypoint"] == ["sh", "-c"]
    ragraft = Path(sys.executable).parent / "ragraft"
    assert ragraft.exists(), "the ragraft command of this virtualenv"
    secrets = tmp_path / "secrets"
    env = {
        **{k: str(v) for k, v in init["environment"].items()},
        "RAGRAFT_SECRETS_DIR": str(secrets),
        "PATH": f"{ragraft.parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*init["entrypoint"], *init["command"]],
            check=False,
            env=env,
            cwd=tmp_path,  # no cluster.toml: the environment describes the cluster
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    bundle = read_bundle(secrets, "ragraft")
    assert sorted(bundle.node_keys) == list(NODES)
    for node in NODES:
        assert node_key(secrets, node)[0] == bundle.node_keys[node]
    before = (secrets / "cluster-secrets.json").read_bytes()
    second = run()  # a later `docker compose up`
    assert second.returncode == 0, second.stderr
    assert "already" in second.stdout
    assert (secrets / "cluster-secrets.json").read_bytes() == before


# ------------------------------------------------------------------ the Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def json(self) -> Any:
        return json.loads(self.args)


def dockerfile() -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = [[]]
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def dockerfile_user() -> str:
    users = [i.args for i in stages()[-1] if i.keyword == "USER"]
    return users[-1]


def dockerfile_copies() -> list[tuple[str, str]]:
    copies = []
    for i in dockerfile():
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            *sources, target = shlex.split(i.args)
            copies += [(source, target) for source in sources]
    return copies


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in stage:
        if i.keyword == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(i.args)))
    return env


def test_the_dockerfile_builds_in_two_stages_and_runs_ragraft_as_its_own_user() -> None:
    preamble, builder, runtime = stages()
    assert [i.args for i in preamble] == ["BASE_IMAGE=python:3.11-slim-bookworm"]
    assert builder[0].args == "${BASE_IMAGE} AS builder"
    assert runtime[0].args == "${BASE_IMAGE}"  # the virtualenv needs the same interpreter
    assert dockerfile_user() == "10001:10001"
    run = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert "--uid 10001" in run and "--gid 10001" in run and " ragraft" in run
    keywords = {i.keyword: i for i in runtime}
    assert keywords["ENTRYPOINT"].json() == ["ragraft"]
    assert keywords["CMD"].json() == ["node"]
    assert keywords["EXPOSE"].args.split() == [str(p) for _, p in _ENV_PORTS.values()]
    assert keywords["VOLUME"].args == "/data"
    env = env_of(runtime)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["RAGRAFT_BIND_HOST"] == "0.0.0.0"
    assert env["RAGRAFT_DATA_DIR"] == "/data"
    assert env["RAGRAFT_SECRETS_DIR"] == "/data/secrets"
    # the generator's conversion is warmed where the nodes will look for it
    assert f"Path('{env['RAGRAFT_MODEL_CACHE']}')" in run and "load_gguf" in run
    assert "node.models --check" in run
    assert any("/opt/ragraft/venv" in i.args for i in runtime if i.keyword == "COPY")
    assert env["PATH"].startswith("/opt/ragraft/venv/bin:")


def test_the_image_installs_from_the_lock_as_make_install_does() -> None:
    builder = stages()[1]
    run = [i.args for i in builder if i.keyword == "RUN"]
    makefile = (ROOT / "Makefile").read_text().replace("$$", "$")
    awk = re.search(r"awk '([^']*)' \$\(LOCK\)", makefile)
    assert awk and any(f"awk '{awk[1]}' requirements.lock" in r for r in run)
    for split in ("sed '/^# \\[no-deps\\]/,$d'", "sed -n '/^# \\[no-deps\\]/,$p'"):
        assert split in makefile and any(f"{split} requirements.lock" in r for r in run)
    installs = [r for r in run if "pip install" in r]
    assert len(installs) == 4
    for command in installs[:3]:
        assert "--require-hashes" in command
    assert (
        "--no-deps --require-hashes" in installs[0] and "--no-deps --require-hashes" in installs[2]
    )
    assert "-r /tmp/lock-deps.txt" in installs[1] and "--no-deps" not in installs[1]
    assert "--no-deps --no-build-isolation ." in installs[3]  # ragraft itself
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^torch==2\.13\.0\+cpu \\$", lock, re.MULTILINE)
    assert re.search(r"^TORCH_SPEC\s*:=\s*torch==2\.13\.0$", makefile, re.MULTILINE)
    gen = re.search(r"^GEN_MODEL\s*:=\s*(\S+)$", makefile, re.MULTILINE)
    assert gen and f"grep -q '^{gen[1]} '" in installs[2]
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in builder if i.keyword == "ARG"}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert '${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}' in installs[1]


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch(prefix, pattern) or fnmatch(prefix, pattern.removeprefix("**/"))
            for pattern in patterns
            for prefix in prefixes
        )

    for source, _ in dockerfile_copies():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    for needed in ("node/secrets.py", "node/config.py", "consensus/raft.py", "ui/server.py"):
        assert not ignored(needed), needed
    for left_out in (".venv", ".git", ".ragraft", "artifacts", "node/__pycache__", "tests"):
        assert ignored(left_out), left_out


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_health_checks_ask_the_nodes_health_routes() -> None:
    healthcheck = next(i for i in stages()[-1] if i.keyword == "HEALTHCHECK")
    dockerfile_check = healthcheck.args.partition("CMD ")[2]
    docker_cmd = json.loads(dockerfile_check)
    compose_cmd = compose()["services"]["n1"]["healthcheck"]["test"][1:]
    assert "127.0.0.1" in docker_cmd[2] and "127.0.0.1:8100" in compose_cmd[2]
    for command, path, env_port in (
        (docker_cmd, "/healthz", True),
        (compose_cmd, "/readyz", False),
    ):
        for status, healthy in ((200, True), (503, False)):
            handler = type("Handler", (_Health,), {"status": status, "paths": []})
            with serving(handler) as port:
                argv = [sys.executable, *command[1:]]
                env = {**os.environ}
                if env_port:
                    env["RAGRAFT_API_PORT"] = str(port)
                else:
                    argv[-1] = argv[-1].replace(":8100/", f":{port}/")
                done = subprocess.run(argv, check=False, env=env, capture_output=True, timeout=30)
            assert (done.returncode == 0) == healthy, (command, status, done.stderr)
            assert handler.paths == [path]


# ------------------------------------------------------------------ the preStop hook


def load_prestop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ragraft_prestop", PRESTOP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


prestop = load_prestop()
STS = "rel-ragraft"


@dataclass
class FakeCluster:
    """What the fake ragraft APIs share: the membership, and what was asked."""

    members: set[str]
    delete_answers: list[int] = field(default_factory=list)  # then 200
    stale_local_view: bool = False  # the removed node never hears of the commit
    password: str = PASSWORD
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)

    def handler(self, name: str) -> type[http.server.BaseHTTPRequestHandler]:
        cluster = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> str:
                auth = self.headers.get("Authorization", "")
                cluster.requests.append((name, self.command, self.path, auth))
                return auth

            def do_POST(self) -> None:
                self._record()
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/api/v1/auth/token":
                    return self._answer(404, {})
                if body != {"username": "admin", "password": cluster.password}:
                    return self._answer(401, {"error": {"message": "wrong password"}})
                return self._answer(200, {"access_token": "admin-token", "expires_in": 60})

            def do_GET(self) -> None:
                if self._record() != "Bearer admin-token":
                    return self._answer(401, {})
                members = set(cluster.members)
                if name == "local" and cluster.stale_local_view:
                    members.add("rel-ragraft-3")
                return self._answer(200, cluster.view(name, members))

            def do_DELETE(self) -> None:
                if self._record() != "Bearer admin-token":
                    return self._answer(401, {})
                node = self.path.rsplit("/", 1)[-1]
                if cluster.delete_answers:
                    status = cluster.delete_answers.pop(0)
                    if status == 503:  # timed out, yet committed ("maybe")
                        cluster.members.discard(node)
                    message = {409: "another membership change is in progress"}.get(status, "")
                    return self._answer(status, {"error": {"message": message}})
                cluster.members.discard(node)
                return self._answer(200, cluster.view("leader", cluster.members))

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def view(self, node: str, members: set[str]) -> dict[str, Any]:
        return {
            "node": "rel-ragraft-3" if node == "local" else "rel-ragraft-0",
            "leader": "rel-ragraft-0",
            "members": {"voters": sorted(members), "learners": [], "addresses": {}},
        }

    def deletes(self) -> list[str]:
        return [r[0] for r in self.requests if r[1] == "DELETE"]


class FakeKubernetes(http.server.BaseHTTPRequestHandler):
    replicas = 3
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path != f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{STS}":
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps({"kind": "StatefulSet", "spec": {"replicas": type(self).replicas}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Hook:
    """The hook's world: Kubernetes, this pod's node, the client Service."""

    cluster: FakeCluster
    kube: type[FakeKubernetes]
    env: dict[str, str]
    kubernetes: Any

    def run(self, pod: str) -> int:
        env = {**self.env, "RAGRAFT_NODE_ID": pod}
        return int(prestop.run(env, kubernetes=self.kubernetes, poll_s=0.02))


@contextmanager
def hook(replicas: int, cluster: FakeCluster, local_up: bool = True) -> Iterator[Hook]:
    kube = type("Kube", (FakeKubernetes,), {"replicas": replicas, "seen": []})
    with (
        serving(kube) as kube_port,
        serving(cluster.handler("local")) as local_port,
        serving(cluster.handler("service")) as service_port,
    ):
        if not local_up:  # a port where nothing listens
            with serving(_Health) as closed:
                pass
            local_port = closed
        env = {
            "RAGRAFT_NODES": ",".join(f"{STS}-{i}={STS}-{i}.peers" for i in range(3)),
            "RAGRAFT_STATEFULSET": STS,
            "RAGRAFT_API_PORT": str(local_port),
            "RAGRAFT_JOIN": f"http://127.0.0.1:{service_port}",
            "RAGRAFT_ADMIN_PASSWORD": PASSWORD,
            "RAGRAFT_PRESTOP_TIMEOUT_S": "5",
        }
        kubernetes = prestop.Kubernetes(
            f"http://127.0.0.1:{kube_port}", "sa-token", NAMESPACE, None
        )
        yield Hook(cluster, kube, env, kubernetes)


def test_the_decision_reads_the_ordinal_and_keeps_the_first_members() -> None:
    assert prestop.ordinal_of("rel-ragraft-12") == 12
    with pytest.raises(prestop.PrestopError, match="not a StatefulSet pod"):
        prestop.ordinal_of("ragraft")
    first = prestop.initial_members("a-0=h0,a-1=h1, a-2=h2")
    assert first == {"a-0", "a-1", "a-2"}
    assert prestop.leaving("a-3", 3, first)  # scaled from 4 to 3
    assert not prestop.leaving("a-3", 4, first)  # a restart: still wanted
    assert not prestop.leaving("a-2", 2, first)  # a first member: never


def test_a_pod_that_is_restarted_stays_a_member() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(5)})
    with hook(5, cluster) as h:
        assert h.run(f"{STS}-3") == 0
        assert h.kube.seen == [
            (f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{STS}", "Bearer sa-token")
        ]
    assert cluster.requests == []  # not even a login
    assert cluster.members == {f"{STS}-{i}" for i in range(5)}


def test_a_first_member_is_never_removed_even_below_its_ordinal() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(3)})
    with hook(2, cluster) as h:
        assert h.run(f"{STS}-2") == 0
        assert h.kube.seen == []
    assert cluster.requests == []


def test_a_pod_scaled_away_is_removed_and_waits_for_it() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(4)}, delete_answers=[409, 409])
    with hook(3, cluster) as h:
        assert h.run(f"{STS}-3") == 0
    assert f"{STS}-3" not in cluster.members
    assert cluster.deletes() == ["local", "local", "local"]  # asked again after each 409
    logins = [r for r in cluster.requests if r[1] == "POST"]
    assert len(logins) == 1  # one token for the whole hook
    assert all(r[3] == "Bearer admin-token" for r in cluster.requests if r[1] != "POST")
    assert (f"/api/v1/cluster/members/{STS}-3") in {r[2] for r in cluster.requests}


def test_a_removal_whose_answer_was_lost_is_recognised_from_another_members_view() -> None:
    # The DELETE times out (503) but commits; the removed node itself never learns the
    # commit and still lists itself: the client Service's member says it is gone.
    cluster = FakeCluster({f"{STS}-{i}" for i in range(4)}, delete_answers=[503])
    cluster.stale_local_view = True
    with hook(3, cluster) as h:
        assert h.run(f"{STS}-3") == 0
    assert cluster.deletes() == ["local"]


def test_the_client_service_is_asked_when_the_local_api_does_not_answer() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(4)})
    with hook(3, cluster, local_up=False) as h:
        assert h.run(f"{STS}-3") == 0
    assert cluster.deletes() == ["service"]
    assert f"{STS}-3" not in cluster.members


def test_the_hook_gives_up_with_a_clear_message_after_its_timeout() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(4)}, delete_answers=[409] * 10_000)
    with hook(3, cluster) as h:
        h.env["RAGRAFT_PRESTOP_TIMEOUT_S"] = "0.5"
        started = time.monotonic()
        with pytest.raises(prestop.PrestopError) as caught:
            h.run(f"{STS}-3")
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    message = str(caught.value)
    assert f"{STS}-3 is still a member" in message and "after 0.5 s" in message
    assert "another membership change is in progress" in message
    assert f"ragraft node remove {STS}-3" in message
    assert len(cluster.deletes()) > 1


def test_refused_credentials_stop_the_hook_at_once() -> None:
    cluster = FakeCluster({f"{STS}-{i}" for i in range(4)}, password="another")
    with hook(3, cluster) as h:
        started = time.monotonic()
        with pytest.raises(prestop.PrestopError, match="admin login refused"):
            h.run(f"{STS}-3")
        assert time.monotonic() - started < 2
    assert cluster.deletes() == []


def test_the_service_account_is_read_from_the_pod(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token\n")
    (account / "namespace").write_text(f"{NAMESPACE}\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    kube = prestop.Kubernetes.in_cluster(env, account)
    assert (kube.url, kube.token, kube.namespace) == (
        "https://10.96.0.1:443",
        "sa-token",
        NAMESPACE,
    )
    v6 = prestop.Kubernetes.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, account)
    assert v6.url == "https://[fd00::1]:443"
    with serving(type("Kube", (FakeKubernetes,), {"replicas": 7, "seen": []})) as port:
        assert replace(kube, url=f"http://127.0.0.1:{port}").statefulset_replicas(STS) == 7
        with pytest.raises(prestop.PrestopError, match="404"):
            replace(kube, url=f"http://127.0.0.1:{port}").statefulset_replicas("other")
    with pytest.raises(prestop.PrestopError, match="KUBERNETES_SERVICE_HOST"):
        prestop.Kubernetes.in_cluster({}, account)
    with pytest.raises(prestop.PrestopError, match="no service account token"):
        prestop.Kubernetes.in_cluster(env, tmp_path / "missing")


def test_main_reports_a_failure_on_stderr_with_exit_status_1() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "RAGRAFT_NODE_ID": f"{STS}-4",
        "RAGRAFT_NODES": f"{STS}-0=h",
    }  # outside a pod: no Kubernetes to ask
    done = subprocess.run(
        [sys.executable, str(PRESTOP)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("prestop: ") and "KUBERNETES_SERVICE_HOST" in done.stderr
    env["RAGRAFT_NODE_ID"] = f"{STS}-0"  # a first member: nothing to do, Kubernetes or not
    done = subprocess.run(
        [sys.executable, str(PRESTOP)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and "stays a member" in done.stdout

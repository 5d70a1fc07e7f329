"""Offline validation of k8s/: built-in kinds against Kubernetes JSON schemas (strict, via the
`kubernetes-validate` package), RayJob/RayCluster against JSON schemas converted from the KubeRay
v1.7.0 CRDs kept in tests/k8s_schemas/. Plus the project's own rules: no literal secrets, no
exposed Ray ports, the RayJob/MLflow contracts of docs/DESIGN.md.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import pinned

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = Path(__file__).parent / "k8s_schemas"
K8S_VERSION = "1.33.0"  # oldest Kubernetes minor the manifests are checked against
RAY_KINDS = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

kv = pytest.importorskip("kubernetes_validate")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in manifest_files():
        for i, doc in enumerate(yaml.load_all(path.read_text(), Loader=_Loader)):
            if doc is not None:
                out.append((f"{path.name}#{i}:{doc.get('kind')}/{doc['metadata']['name']}", doc))
    return out


# ---- KubeRay CRD -> strict JSON schema (tests/k8s_schemas/crd_schema.py) ---------------


def _load_converter():
    spec = importlib.util.spec_from_file_location("crd_schema", CRDS / "crd_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def ray_validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    schema = _load_converter().crd_json_schema(CRDS / RAY_KINDS[kind], version)
    assert schema["properties"]["kind"] == {"const": kind}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError (or kubernetes_validate's subclass) if invalid."""
    if doc["kind"] in RAY_KINDS:
        group, version = doc["apiVersion"].split("/")
        assert group == "ray.io", doc["apiVersion"]
        ray_validator(doc["kind"], version).validate(doc)
    else:
        kv.validate(doc, K8S_VERSION, strict=True)


DOCS = documents()


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_is_valid(name, doc):
    validate(doc)


def test_every_kind_is_covered():
    kinds = {d["kind"] for _, d in DOCS}
    assert {"RayJob", "RayCluster", "Deployment", "Service", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds


def test_kustomization_lists_every_manifest_and_builds():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: resource list checked, build not run")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.load_all(out.stdout, Loader=_Loader) if d]
    assert len(built) == len(DOCS)
    for doc in built:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kust["namespace"]
    images = re.findall(r"image: (\S+)", out.stdout)
    assert images and all("/" in i or i.startswith("postgres:") for i in images), images


# ---- broken manifests must fail ----------------------------------------------------------


def _doc(kind: str, name: str | None = None) -> dict:
    for _, d in DOCS:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
            return copy.deepcopy(d)
    raise LookupError(kind)


def _rename(node: dict, old: str, new: str) -> None:
    node[new] = node.pop(old)


def _worker_container(d: dict) -> dict:
    return d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


BROKEN = {  # id: (kind, how to break it)
    "rayjob-typo": ("RayJob", lambda d: _rename(d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish")),
    "rayjob-container-typo": ("RayJob", lambda d: _rename(_worker_container(d), "image", "imagee")),
    "raycluster-type": ("RayCluster", lambda d: d["spec"].update(enableInTreeAutoscaling="yes")),
    "raycluster-missing": ("RayCluster", lambda d: d["spec"]["headGroupSpec"].pop("template")),
    "deployment-type": ("Deployment", lambda d: d["spec"].update(replicas="one")),
    "deployment-typo": (
        "Deployment",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
    ),
    "service-port-type": ("Service", lambda d: d["spec"]["ports"][0].update(port="five")),
    "networkpolicy-typo": ("NetworkPolicy", lambda d: _rename(d["spec"], "podSelector", "podSelecter")),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_manifest_fails(case):
    kind, breaker = BROKEN[case]
    doc = _doc(kind)
    validate(doc)  # the unbroken original passes
    breaker(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_defaulted_fields_are_not_required():
    # minReplicas/maxReplicas are `required` in the CRD but carry defaults: omitting them is fine.
    doc = _doc("RayCluster")
    group = doc["spec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]
    validate(doc)


# ---- project rules -----------------------------------------------------------------------


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), v
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _env_lists(doc):
    for path, value in _walk(doc):
        if path and path[-1] == "env" and isinstance(value, list):
            yield path, value


SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY\b|_KEY_ID\b|CREDENTIAL)", re.I)
CREDENTIAL_URI = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\b(ghp|gho|github_pat)_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/])"),  # base64 blob
]


def test_no_secret_objects_or_literal_secret_values():
    for name, doc in DOCS:
        assert doc["kind"] != "Secret", f"{name}: Secrets are created by hand, never committed"
        for path, value in _walk(doc):
            key = path[-1] if path else ""
            if isinstance(key, str) and re.fullmatch(r"(?i).*password.*", key):
                assert isinstance(value, dict) and "secretKeyRef" in str(value), (
                    f"{name}: {'.'.join(map(str, path))} is a literal"
                )
            if isinstance(value, str) and (m := CREDENTIAL_URI.search(value)):
                assert re.fullmatch(r"\$\([A-Z_]+\)", m.group(1)), (
                    f"{name}: credentials inside a URI must be a $(VAR) from a Secret"
                )
        for path, env in _env_lists(doc):
            for var in env:
                if SECRET_NAME.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), (
                        f"{name}: env {var['name']} must come from a Secret (secretKeyRef)"
                    )


def test_no_committed_file_holds_a_secret():
    for path in sorted(p for p in K8S.rglob("*") if p.is_file()):
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.name}: looks like a secret: {pattern.pattern}"
        if path.suffix == ".md":  # prose may say "password: ..."; check its commands only
            text = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))
        for line in text.splitlines():
            m = re.search(r"(?i)\bpassword\s*[:=]\s*(\S+)", line)
            if m and not line.lstrip().startswith("#"):
                assert re.match(r"""["']?\$|secretKeyRef|\{name:""", m.group(1)), (
                    f"{path.name}: literal password: {line.strip()}"
                )


def test_env_references_are_defined_before_use():
    # Kubernetes expands $(VAR) only for variables defined earlier in the same list.
    for name, doc in DOCS:
        for _, env in _env_lists(doc):
            seen = set()
            for var in env:
                for ref in re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", var.get("value", "")):
                    assert ref in seen, f"{name}: {var['name']} uses $({ref}) before it is set"
                seen.add(var["name"])


def test_ray_ports_never_exposed_outside_the_cluster():
    for name, doc in DOCS:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
        for path, value in _walk(doc):
            if path and path[-1] == "serviceType":
                assert value == "ClusterIP", f"{name}: Ray head service is {value}"
            if path and path[-1] == "type" and value in ("NodePort", "LoadBalancer"):
                pytest.fail(f"{name}: {'.'.join(map(str, path))} is {value}")  # headService too
            if path and path[-1] in ("enableIngress", "hostNetwork"):
                assert value is False, f"{name}: {path[-1]} exposes the pod"
            if path and path[-1] == "hostPort":
                pytest.fail(f"{name}: hostPort exposes a port on the node")
    for _, doc in DOCS:
        if doc["kind"] == "NetworkPolicy":
            for rule in doc["spec"].get("ingress", []):
                ray_only = all(
                    p.get("podSelector", {}).get("matchLabels") == {"ray.io/is-ray-node": "yes"}
                    and "namespaceSelector" not in p
                    for p in rule.get("from", [])
                )
                if not ray_only and doc["metadata"]["name"].startswith("ray-"):
                    ports = {p["port"] for p in rule.get("ports", [])}
                    assert ports == {8265}, f"{doc['metadata']['name']}: {ports} opened widely"


def _pod_specs(doc):
    for path, value in _walk(doc):
        if path and path[-1] == "template" and isinstance(value, dict) and "spec" in value:
            yield value["spec"]


def test_rayjob_contract():
    job = _doc("RayJob")["spec"]
    assert job["entrypoint"] == "python -m search.run --space default"
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
    head = job["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    _check_ray_cluster(job["rayClusterSpec"])


def test_raycluster_autoscales_gpu_workers():
    spec = _doc("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [gpu] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    _check_ray_cluster(spec)


def _mlflow_service_host() -> str:
    ns = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    return f"mlflow.{ns}.svc.cluster.local"


def _check_ray_cluster(spec):
    assert spec["rayVersion"] == pinned("ray")
    assert spec["authOptions"]["mode"] == "token"
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert gpu, "a GPU worker group with nvidia.com/gpu limits"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{_mlflow_service_host()}:5000"
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-credentials"


def test_mlflow_deployment_runs_our_cli_with_auth(monkeypatch):
    from mlflow_server.config import parse_config

    dep = _doc("Deployment", "mlflow")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "mlflow_server"]
    env = {e["name"]: e for e in c["env"]}
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://")
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", uri.replace("$(POSTGRES_PASSWORD)", "x"))
    cfg = parse_config(c["args"])  # the manifest's arguments are valid for our CLI
    assert cfg.auth and cfg.host == "0.0.0.0" and cfg.port == 5000
    assert f"{_mlflow_service_host()}:*" in cfg.allowed_hosts.split(",")
    assert "localhost:*" in cfg.allowed_hosts.split(",")  # kubectl port-forward
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


def test_pods_run_unprivileged():
    for name, doc in DOCS:
        for pod in _pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_readme_creates_every_required_secret():
    readme = (K8S / "README.md").read_text()
    needed: dict[str, set[str]] = {}
    for _, doc in DOCS:
        for path, value in _walk(doc):
            if path and path[-1] == "secretKeyRef" and not value.get("optional"):
                needed.setdefault(value["name"], set()).add(value["key"])
            if path and path[-1] == "secretName" and path[-2] == "authOptions":
                needed.setdefault(value, set()).add("auth_token")
    for secret, keys in needed.items():
        m = re.search(rf"kubectl[^\n]*create secret generic {re.escape(secret)}\b(.*?)(\n\n|```)", readme, re.S)
        assert m, f"README does not create Secret {secret}"
        for key in keys:
            assert f"--from-literal={key}=" in m.group(1) or f"--from-file={key}=" in m.group(1), (
                f"README's Secret {secret} lacks key {key}"
            )


def test_dockerfile_pins_and_sandbox():
    text = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(pinned('ray'))}-py311-cpu$", text, re.M)
    assert "FROM ${RAY_IMAGE}" in text
    assert re.search(r"apt-get install -y[^\n]*bubblewrap", text)
    assert re.search(r"torch==\$\{TORCH_VERSION\}", text) and "ARG TORCH_VERSION=" in text  # test_versions
    assert re.search(r"pip install [^\n]*\s\.\s", text)
    assert "HF_HOME=" in text
    for m in re.finditer(r"^(?:ENV|ARG)\s+(.+)$", text, re.M):
        for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", m.group(1)):
            assert not SECRET_NAME.search(name), f"Dockerfile bakes {name}"


# ---- rayjob.yaml's inline cluster is raycluster.yaml's, but for what a one-search cluster changes --

# path prefix (in the cluster spec) -> why the RayJob's cluster differs from the RayCluster.
RAYJOB_DIFFERS = {
    "enableInTreeAutoscaling": "the interactive cluster autoscales its GPU workers; a job's is fixed",
    "autoscalerOptions": "no autoscaler in a job's cluster",
    "workerGroupSpecs[0].replicas": "a job runs a fixed number of GPU workers (0..4 when interactive)",
    "workerGroupSpecs[0].minReplicas": "same",
    "workerGroupSpecs[0].maxReplicas": "same",
    "headGroupSpec.template.spec.automountServiceAccountToken": (
        "the interactive head runs the autoscaler, which needs the Kubernetes API; a job's does not"
    ),
}
ABSENT = "<absent>"


def _leaves(node, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, node


def _cluster_differences(cluster: dict, job_cluster: dict) -> dict[str, tuple]:
    """path -> (RayCluster value, RayJob value) for every leaf that differs (ABSENT if missing)."""
    a, b = dict(_leaves(cluster)), dict(_leaves(job_cluster))
    return {
        p: (a.get(p, ABSENT), b.get(p, ABSENT))
        for p in sorted(a.keys() | b.keys())
        if a.get(p, ABSENT) != b.get(p, ABSENT)
    }


def _allowed(path: str) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in RAYJOB_DIFFERS)


def test_rayjob_cluster_agrees_with_raycluster_value_by_value():
    cluster, job = _doc("RayCluster")["spec"], _doc("RayJob")["spec"]["rayClusterSpec"]
    differences = _cluster_differences(cluster, job)
    unexplained = {p: v for p, v in differences.items() if not _allowed(p)}
    assert not unexplained, (
        "k8s/rayjob.yaml's rayClusterSpec and k8s/raycluster.yaml disagree "
        f"(change both, or add the path to RAYJOB_DIFFERS with a reason): {unexplained}"
    )
    stale = [p for p in RAYJOB_DIFFERS if not any(d == p or d.startswith((p + ".", p + "[")) for d in differences)]
    assert not stale, f"RAYJOB_DIFFERS lists paths that no longer differ: {stale}"
    shared = set(dict(_leaves(cluster))) & set(dict(_leaves(job)))
    assert len(shared) > 100  # the comparison saw the whole cluster, not an empty spec
    group = job["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] > 0


@pytest.mark.parametrize(
    "path, value",
    [
        (("workerGroupSpecs", 0, "template", "spec", "containers", 0, "image"), "softprompt-search-gpu:0.2.0"),
        (("headGroupSpec", "template", "spec", "containers", 0, "resources", "limits", "memory"), "16Gi"),
        (("rayVersion",), "2.0.0"),
    ],
)
def test_rayjob_cluster_disagreement_is_caught(path, value):
    job = _doc("RayJob")["spec"]["rayClusterSpec"]
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    differences = _cluster_differences(_doc("RayCluster")["spec"], job)
    assert [p for p in differences if not _allowed(p)] == [
        ".".join(f"[{k}]" if isinstance(k, int) else k for k in path).replace(".[", "[")
    ]

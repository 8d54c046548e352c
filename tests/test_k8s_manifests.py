"""The Kubernetes manifests (deploy/k8s), checked statically: every manifest against the Kubernetes schema of
K8S_VERSION (kubernetes-validate, strict: an unknown field is an error), the RayService against KubeRay's vendored
CRD schema (tests/contracts/kuberay), and what the deployment promises: non-root on a read-only root filesystem,
probes on /health and /ready, no egress for the server pods and HTTPS for the pull Job alone, a grace period from
the server's shutdown setting, a memory limit from its memory budget, an HPA on a metric the server exports.
Where kubectl is installed, `kubectl kustomize` renders the base and the example overlay and the output is
validated too."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.config import ConfigError, HubSource, Settings, load_models_file
from server.http.ops import ops
from server.metrics import EngineSnapshot, Metrics

ROOT = Path(__file__).parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are written for (deploy/k8s/README.md)
KUBERAY_CRD = ROOT / "tests" / "contracts" / "kuberay" / "ray.io_rayservices.yaml"
MEMORY_HEADROOM = 1024**3  # the container's memory limit is SLM_MEMORY_BUDGET + this
WORKER_STOP_S = 10  # after the grace period, each model worker is asked to stop, then killed after 10 s
UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3}


def docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def manifest_files() -> list[Path]:
    """Every file of full Kubernetes objects: the resources of the base and the overlay, and the Secret example."""
    files = [BASE / name for name in kustomization(BASE)["resources"]]
    files += [OVERLAY / name for name in kustomization(OVERLAY)["resources"] if not name.startswith("..")]
    return [*files, K8S / "secret.example.yaml"]


def one(kind: str, folder: Path = BASE) -> dict:
    found = [
        doc
        for name in kustomization(folder)["resources"]
        if not name.startswith("..")
        for doc in docs(folder / name)
        if doc["kind"] == kind
    ]
    assert len(found) == 1, kind
    return found[0]


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def literal_env(c: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in c.get("env", ()) if "value" in item}


def quantity(text: str | int) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text)).groups()
    return int(number) * UNITS[unit]


def selects(selector: dict, labels: dict) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def test_every_yaml_file_is_checked_by_this_module():
    covered = set(manifest_files()) | {
        BASE / "kustomization.yaml",
        BASE / "models.yaml",  # a models file, loaded below
        OVERLAY / "kustomization.yaml",
        OVERLAY / "deployment-resources.yaml",  # a patch, checked below and rendered by kubectl
        K8S / "prometheus-adapter" / "values.yaml",
        K8S / "ray" / "rayservice.yaml",
    }
    assert set(K8S.rglob("*.yaml")) == covered


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_each_manifest_is_valid_against_the_kubernetes_schema(path):
    for doc in docs(path):
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_validation_refuses_an_unknown_field():
    deployment = copy.deepcopy(one("Deployment"))
    container(deployment)["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFS"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_models_file_is_a_valid_registry_whose_hub_models_the_job_pulls():
    (generator,) = kustomization(BASE)["configMapGenerator"]
    assert generator["files"] == ["models.yaml"]
    models = {spec.name: spec for spec in load_models_file(BASE / "models.yaml").models}
    shipped = {spec.name: spec for spec in load_models_file(ROOT / "models.yaml").models}
    assert models.items() - shipped.items() == set()  # each entry as the repository's models.yaml has it
    hub = {name for name, spec in models.items() if isinstance(spec.source, HubSource)}
    command, *pulled = container(one("Job"))["args"]
    assert command == "pull" and set(pulled) == hub and hub
    assert all(re.fullmatch(r"[0-9a-f]{40}", models[name].source.revision) for name in hub)  # pinned to a commit
    preload = literal_env(container(one("Deployment")))["SLM_PRELOAD"].split(",")
    assert set(preload) <= models.keys() - hub  # /ready never waits on a download


def test_pods_run_as_the_images_user_on_a_read_only_root_filesystem():
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for workload in (one("Deployment"), one("Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        context = container(workload)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container(workload)["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        env = literal_env(container(workload))
        assert Path(env["SLM_MODELS_FILE"]).parent == Path("/etc/slm-server/models")
        assert "configMap" in volumes[mounts["/etc/slm-server/models"]["name"]]
        assert volumes[mounts[env["HF_HOME"]]["name"]]["persistentVolumeClaim"]["claimName"] == "slm-server-hf-cache"


def test_the_server_reads_models_and_keys_from_volumes_and_writes_only_to_its_data_dir():
    deployment = one("Deployment")
    env = literal_env(container(deployment))
    mounts = {mount["mountPath"]: mount for mount in container(deployment)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts[env["HF_HOME"]]["readOnly"] is True  # only the pull Job writes the model cache
    data = mounts[env["SLM_DATA_DIR"]]
    assert "emptyDir" in volumes[data["name"]] and not data.get("readOnly")
    keys = Path(env["SLM_API_KEY_FILE"])
    secret = volumes[mounts[str(keys.parent)]["name"]]["secret"]
    assert secret["secretName"] == "slm-server-api-keys" and keys.name in [item["path"] for item in secret["items"]]
    assert "optional" not in secret  # no Secret, no server: it never starts without keys
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable == {"/tmp", env["SLM_DATA_DIR"]}
    pull_mounts = {mount["mountPath"]: mount for mount in container(one("Job"))["volumeMounts"]}
    assert not pull_mounts[literal_env(container(one("Job")))["HF_HOME"]].get("readOnly")


def test_the_secret_example_holds_no_usable_key(tmp_path):
    (secret,) = docs(K8S / "secret.example.yaml")
    assert secret["metadata"]["name"] == "slm-server-api-keys"
    (tmp_path / "api-keys").write_text(secret["stringData"]["api-keys"])
    with pytest.raises(ConfigError, match="holds no key"):  # the server refuses to start on it
        Settings(api_key_file=tmp_path / "api-keys").all_api_keys()


def test_probes_check_health_and_readiness_on_the_served_port():
    served = {route.path for route in ops.routes}
    c = container(one("Deployment"))
    assert c["startupProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and {"/health", "/ready"} <= served
    (port,) = c["ports"]
    assert port["name"] == "http" and port["containerPort"] == Settings.from_env(literal_env(c)).port
    assert {c[probe]["httpGet"]["port"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")} == {"http"}


def test_the_grace_period_covers_the_servers_shutdown():
    deployment = one("Deployment")
    settings = Settings.from_env(literal_env(container(deployment)))
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == int(command[1]) + settings.shutdown_grace_s + WORKER_STOP_S
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["slm-server"]
    assert compose["stop_grace_period"] == f"{settings.shutdown_grace_s + WORKER_STOP_S:.0f}s"  # the same after SIGTERM


@pytest.mark.parametrize(
    "container_spec",
    [container(one("Deployment")), container(docs(OVERLAY / "deployment-resources.yaml")[0])],
    ids=["base", "overlay"],
)
def test_the_memory_limit_is_the_budget_plus_headroom(container_spec):
    budget = Settings.from_env(literal_env(container_spec)).memory_budget
    resources = container_spec["resources"]
    assert budget and quantity(resources["limits"]["memory"]) == budget + MEMORY_HEADROOM
    assert resources["requests"]["memory"] == resources["limits"]["memory"]  # never evicted for memory it was given
    assert "cpu" not in resources["limits"]  # llama.cpp's threads would be throttled


def test_every_slm_variable_is_a_setting():
    workloads = [one("Deployment"), one("Job"), docs(OVERLAY / "deployment-resources.yaml")[0]]
    names = {
        item["name"]
        for workload in workloads
        for c in workload["spec"]["template"]["spec"]["containers"]
        for item in c.get("env", ())
    }
    settings = {"SLM_" + field.upper() for field in Settings.model_fields}
    assert {name for name in names if name.startswith("SLM_")} <= settings


def policies_selecting(labels: dict) -> list[dict]:
    return [
        doc
        for name in kustomization(BASE)["resources"]
        for doc in docs(BASE / name)
        if doc["kind"] == "NetworkPolicy" and selects(doc["spec"]["podSelector"], labels)
    ]


def test_server_pods_may_open_no_connection():
    policies = policies_selecting(pod_labels(one("Deployment")))
    assert policies and all("Egress" in policy["spec"]["policyTypes"] for policy in policies)
    assert all(not policy["spec"].get("egress") for policy in policies)  # DNS included
    ports = [port["port"] for policy in policies for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert ports == ["http"]


def test_the_pull_job_alone_may_reach_https():
    (policy,) = policies_selecting(pod_labels(one("Job")))
    assert "Egress" in policy["spec"]["policyTypes"] and policy["spec"]["ingress"] == []
    allowed = {
        (port["protocol"], port["port"], peer["ipBlock"]["cidr"])
        for rule in policy["spec"]["egress"]
        if "to" in rule
        for peer in rule["to"]
        for port in rule["ports"]
    }
    assert allowed == {("TCP", 443, "0.0.0.0/0"), ("TCP", 443, "::/0")}
    dns = [port for rule in policy["spec"]["egress"] if "to" not in rule for port in rule["ports"]]
    assert {(port["protocol"], port["port"]) for port in dns} == {("UDP", 53), ("TCP", 53)}
    assert not selects(policy["spec"]["podSelector"], pod_labels(one("Deployment")))


def test_service_and_disruption_budget_select_the_server_pods_only():
    deployment, job = one("Deployment"), one("Job")
    assert selects(deployment["spec"]["selector"], pod_labels(deployment))
    service, pdb = one("Service"), one("PodDisruptionBudget")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selects({"matchLabels": selector}, pod_labels(deployment))
        assert not selects({"matchLabels": selector}, pod_labels(job))
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert one("PersistentVolumeClaim")["metadata"]["name"] == "slm-server-hf-cache"


def test_the_hpa_scales_the_deployment_on_the_queue_depth_the_server_exports():
    hpa = one("HorizontalPodAutoscaler", OVERLAY)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slm-server"}
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    metrics = Metrics()
    metrics.engines.snapshots = {"m": EngineSnapshot(3, 1, 0, 0, 0)}
    families = {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}
    assert name == "slm_queue_depth" and families[name].type == "gauge"
    assert families[name].samples[0].value == 3
    (rule,) = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["as"] == name
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}  # per pod, as the HPA's Pods metric needs


def test_the_overlay_hands_replicas_to_the_hpa_and_patches_the_base_deployment():
    overlay = kustomization(OVERLAY)
    patch = docs(OVERLAY / "deployment-resources.yaml")[0]
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", one("Deployment")["metadata"]["name"])
    assert container(patch)["name"] == container(one("Deployment"))["name"]
    inline = [yaml.safe_load(item["patch"]) for item in overlay["patches"] if "patch" in item]
    assert [{"op": "remove", "path": "/spec/replicas"}] in inline
    (image,) = overlay["images"]
    assert image["name"] == container(one("Deployment"))["image"].split(":")[0]


def strict_schema(schema: object) -> object:
    """The CRD schema with unknown fields refused where the API server would prune them."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in strict or strict.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in strict and not open_ended:
        strict["additionalProperties"] = False
    return strict


def rayservice_validator() -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB: 4 s with the pure-Python loader
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == "RayService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def test_the_rayservice_is_valid_against_kuberays_crd_and_runs_the_ray_serve_application():
    path = K8S / "ray" / "rayservice.yaml"
    (service,) = docs(path)
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    validator = rayservice_validator()
    validator.validate(service)
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert not validator.is_valid(broken)  # a misspelt field is caught, not pruned
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    # The application deploy/ray/serve.yaml runs, with the same deployments and bounds.
    (local,) = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())["applications"]
    assert application["import_path"] == local["import_path"] == "server.cluster.ray_app:build"
    assert application["deployments"] == local["deployments"]
    module, _, name = application["import_path"].partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert f"def {name}(" in source
    assert (KUBERAY_CRD.parent / "LICENSE").read_text().lstrip().startswith("Apache License")


def kustomize(folder: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kubectl_kustomize_renders_valid_manifests():
    base, overlay = kustomize(BASE), kustomize(OVERLAY)
    for doc in base + overlay:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION
    for rendered in (base, overlay):
        kinds = {doc["kind"]: doc for doc in rendered}
        (config,) = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
        assert config["metadata"]["name"].startswith("slm-server-models-")  # hashed: an edit rolls the pods
        assert config["data"]["models.yaml"] == (BASE / "models.yaml").read_text()
        for workload in (kinds["Deployment"], kinds["Job"]):
            (models,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
            assert models["configMap"]["name"] == config["metadata"]["name"]
        assert "Secret" not in kinds
    deployment = next(doc for doc in overlay if doc["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"]
    assert container(deployment)["image"] == "registry.example.com/slm-server:0.1.0"
    budget = Settings.from_env(literal_env(container(deployment))).memory_budget
    limit = quantity(container(deployment)["resources"]["limits"]["memory"])
    assert budget == 8 * 1024**3 and limit == budget + MEMORY_HEADROOM
    namespaced = [doc for doc in overlay if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"slm"}


WORKLOADS = ("Deployment", "Job", "RayService", "StatefulSet", "Pod")


def test_kubernetes_and_ray_run_one_image():
    files = [*sorted((K8S / "base").glob("*.yaml")), *sorted((K8S / "ray").glob("*.yaml"))]  # not the patches
    workloads = [doc for path in files for doc in docs(path) if doc.get("kind") in WORKLOADS]
    assert {doc["kind"] for doc in workloads} == {"Deployment", "Job", "RayService"}
    images = {container["image"] for doc in workloads for container in _containers(doc)}
    assert images == {"slm-server:latest"}  # built with --build-arg EXTRAS=ray, it serves both


def _containers(doc: dict) -> list[dict]:
    """Every container of a manifest, wherever its pod templates are (a RayService has several)."""
    found: list[dict] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found

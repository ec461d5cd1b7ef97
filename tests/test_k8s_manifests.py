"""deploy/k8s/*.yaml: the Kubernetes manifests must be valid Kubernetes objects and describe the system
nearline.yaml describes.

No cluster runs here, so nothing is applied. What these tests check instead, offline:
  * every document validates against the Kubernetes JSON schema of its kind and apiVersion, for every
    Kubernetes minor version that kubernetes-validate (pinned in pyproject's dev extra) bundles, in its
    strict form (an unknown field, e.g. a misspelt "livenesProbe", is an error, where kubectl would only
    drop it with a warning); a kind/apiVersion the schemas do not have is an error too;
  * the validator really rejects broken copies of the manifests (so a green run means something);
  * project facts a schema cannot know: the ConfigMap's nearline.yaml loads with nearline's own loader,
    the StatefulSet's replicas equal its --instances, the probes hit /healthz and /readyz on
    job.metrics_port, there is one standardizer Deployment per configured processor, and every container
    gets the config file, the endpoints and the optional Secret the same way.
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from nearline import REPO_ROOT
from nearline.config import ConfigError, load_config
from nearline.standardize.processors import PROCESSORS

K8S = REPO_ROOT / "deploy" / "k8s"
# every minor version whose schemas the installed kubernetes-validate bundles (1.25 ... 1.37 for 1.37.0)
K8S_VERSIONS = sorted(set(all_versions()), key=Version)
JOB_LABELS = {"app.kubernetes.io/name": "nearline", "app.kubernetes.io/component": "job"}


# ---- loading and helpers ----------------------------------------------------------------------
def load_documents() -> list[dict]:
    docs = []
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, f"no manifests under {K8S}"
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:  # an empty document between two '---'
                doc["__file__"] = f.name
                docs.append(doc)
    return docs


def k8s_object(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__file__"}


def schema_errors(obj: dict, version: str) -> list[str]:
    """The validator's objections to one object, as text; [] when it validates."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def option(command: list[str], name: str) -> str | None:
    """The value after `name` in an argv list (None if absent)."""
    return command[command.index(name) + 1] if name in command else None


def named_port(container: dict, port) -> int:
    """A probe's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port {port!r} is not a named port of container {container['name']}"
    return by_name[port]


@pytest.fixture(scope="module")
def docs():
    return load_documents()


@pytest.fixture(scope="module")
def cfg(docs, tmp_path_factory):
    """The config the containers run with: the ConfigMap's nearline.yaml through nearline's loader."""
    path = tmp_path_factory.mktemp("k8s") / "nearline.yaml"
    path.write_text(one(docs, "ConfigMap", "nearline-config")["data"]["nearline.yaml"])
    return load_config(path, env={})


@pytest.fixture(scope="module")
def job(docs):
    return one(docs, "StatefulSet", "nearline-job")


# ---- Kubernetes schemas -----------------------------------------------------------------------
def test_the_expected_objects_and_nothing_namespaced(docs):
    got = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert got == sorted([
        ("ConfigMap", "nearline-config"), ("ConfigMap", "nearline-env"),
        ("Service", "nearline-job"), ("StatefulSet", "nearline-job"),
        ("Deployment", "standardize-title"), ("Deployment", "standardize-skills"),
        ("Deployment", "standardize-company"), ("Deployment", "standardize-geo"),
    ])
    for d in docs:
        # `kubectl apply -n <ns> -f deploy/k8s/` decides the namespace; a hard-coded one would win over it
        assert "namespace" not in d["metadata"], f"{d['__file__']}: {d['kind']} {d['metadata']['name']}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_document_validates_against_the_kubernetes_schema(docs, version):
    problems = {f"{d['__file__']} {d['kind']}/{d['metadata']['name']}": schema_errors(k8s_object(d), version)
                for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


def _keys(path) -> list:
    """A dotted path ("spec.replicas", a number indexes a list), or a list of keys as they are."""
    return [int(p) if p.isdigit() else p for p in path.split(".")] if isinstance(path, str) else list(path)


def _set(obj: dict, path, value) -> dict:
    """A deep copy of obj with the value at path replaced (value None: the key deleted)."""
    obj = copy.deepcopy(obj)
    *parents, last = _keys(path)
    node = obj
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return obj


def _rename(obj: dict, path, new_key: str) -> dict:
    """A deep copy of obj with the key at path renamed to new_key (its value kept)."""
    obj = copy.deepcopy(obj)
    *parents, old_key = _keys(path)
    node = obj
    for p in parents:
        node = node[p]
    node[new_key] = node.pop(old_key)
    return obj


BROKEN = {
    # a typo kubectl would silently drop (with a warning): the pod would run without a liveness probe
    "misspelt field": lambda s: _rename(s, "spec.template.spec.containers.0.livenessProbe", "livenesProbe"),
    "replicas as a string": lambda s: _set(s, "spec.replicas", "two"),
    "container without a name": lambda s: _set(s, "spec.template.spec.containers.0.name", None),
    "StatefulSet without a template": lambda s: _set(s, "spec.template", None),
    "command as one string": lambda s: _set(s, "spec.template.spec.containers.0.command", "nearline run"),
    "probe port as a list": lambda s: _set(s, "spec.template.spec.containers.0.readinessProbe.httpGet.port", [9464]),
    "env value from an integer": lambda s: _set(s, "spec.template.spec.containers.0.env.0.value", 5),
    # apps/v1beta1 StatefulSets were removed in Kubernetes 1.16: no schema, an error, not a pass
    "removed apiVersion": lambda s: _set(s, "apiVersion", "apps/v1beta1"),
    "unknown kind": lambda s: _set(s, "kind", "StatefullSet"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_the_validator_rejects_a_broken_manifest(job, breakage):
    good = k8s_object(job)
    version = K8S_VERSIONS[-1]
    assert schema_errors(good, version) == []  # so the rejection below is the breakage's doing
    broken = BROKEN[breakage](good)
    assert broken != good
    assert schema_errors(broken, version), f"the validator accepted: {breakage}"


def test_a_broken_configmap_is_rejected_too(docs):
    cm = k8s_object(one(docs, "ConfigMap", "nearline-config"))
    broken = _set(cm, ["data", "nearline.yaml"], {"job": {"metrics_port": 9464}})  # a mapping, not the file's text
    assert schema_errors(broken, K8S_VERSIONS[-1])


# ---- the ConfigMap is a config nearline accepts ----------------------------------------------
def test_configmap_nearline_yaml_loads_with_the_project_loader(cfg):
    assert cfg.base_dir == "/app"  # explicit: else paths would resolve next to the mounted file
    assert cfg.job.metrics_port == 9464
    assert cfg.job.metrics_bind == "0.0.0.0"  # the kubelet's probes and Prometheus come from outside
    assert cfg.kafka.bootstrap == "" and cfg.redis.url == ""  # endpoints only from the environment
    assert str(cfg.path(cfg.models.registry)).startswith("/app/")


def test_the_loader_check_can_fail(docs, tmp_path):
    text = one(docs, "ConfigMap", "nearline-config")["data"]["nearline.yaml"]
    bad = tmp_path / "nearline.yaml"
    bad.write_text(text.replace("metrics_port:", "metrics_prot:"))
    with pytest.raises(ConfigError, match="metrics_prot"):
        load_config(bad, env={})


def test_env_configmap_names_the_mounted_config_and_the_endpoints(docs):
    env = one(docs, "ConfigMap", "nearline-env")["data"]
    assert set(env) >= {"NEARLINE_CONFIG", "NEARLINE_KAFKA_BOOTSTRAP", "NEARLINE_REDIS_URL"}
    assert env["NEARLINE_REDIS_URL"].startswith(("redis://", "rediss://"))
    assert env["NEARLINE_KAFKA_BOOTSTRAP"] and "://" not in env["NEARLINE_KAFKA_BOOTSTRAP"]
    assert PurePosixPath(env["NEARLINE_CONFIG"]).name == "nearline.yaml"


# ---- the StatefulSet: static partition assignment, probes, shutdown --------------------------
def static_assignment_problems(sts: dict, cfg) -> list[str]:
    command = pod_spec(sts)["containers"][0]["command"]
    problems = []
    if command[:2] != ["nearline", "run"]:
        problems.append(f"command is not `nearline run`: {command}")
    if option(command, "--assignment") == "group":
        return problems  # Kafka's consumer-group protocol: any replica count works
    instances, replicas = option(command, "--instances"), sts["spec"]["replicas"]
    if instances is None or int(instances) != replicas:
        problems.append(f"replicas {replicas} != --instances {instances}: partitions unconsumed or consumed twice")
    if option(command, "--instance") != "auto":
        problems.append("--instance must be auto (the ordinal from the pod's hostname nearline-job-<n>)")
    if instances is not None and int(instances) > cfg.topics.partitions:
        problems.append(f"--instances {instances} > topics.partitions {cfg.topics.partitions}: idle pods")
    return problems


def test_statefulset_replicas_equal_instances(job, cfg):
    assert job["spec"]["replicas"] == 2
    assert pod_spec(job)["containers"][0]["command"] == ["nearline", "run", "--instance", "auto", "--instances", "2"]
    assert static_assignment_problems(job, cfg) == []


@pytest.mark.parametrize("change", ["replicas", "instances"])
def test_a_replica_count_out_of_step_with_instances_is_caught(job, cfg, change):
    if change == "replicas":
        broken = _set(job, "spec.replicas", 3)
    else:
        broken = _set(job, "spec.template.spec.containers.0.command",
                      ["nearline", "run", "--instance", "auto", "--instances", "3"])
    assert any("!= --instances" in p for p in static_assignment_problems(broken, cfg))
    grouped = _set(broken, "spec.template.spec.containers.0.command", ["nearline", "run", "--assignment", "group"])
    assert static_assignment_problems(grouped, cfg) == []


def test_statefulset_pods_and_headless_service(docs, job):
    svc = one(docs, "Service", "nearline-job")
    assert svc["spec"]["clusterIP"] == "None"  # headless
    assert job["spec"]["serviceName"] == svc["metadata"]["name"]
    assert job["spec"]["podManagementPolicy"] == "Parallel"
    assert job["spec"]["selector"]["matchLabels"] == JOB_LABELS
    # the Service selects the job's pods and no standardizer's
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            selected = svc["spec"]["selector"].items() <= labels.items()
            assert selected == (d is job), d["metadata"]["name"]
    # pod hostnames are nearline-job-<n>: the name must stay a short DNS label for --instance auto
    assert job["metadata"]["name"] == "nearline-job"
    assert pod_spec(job).get("hostname") is None and not pod_spec(job).get("setHostnameAsFQDN")


def probe_problems(container: dict, metrics_port: int) -> list[str]:
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    problems = []
    for probe, path in want.items():
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{probe}: no httpGet")
            continue
        if get.get("path") != path:
            problems.append(f"{probe}: path {get.get('path')!r}, not {path}")
        if named_port(container, get["port"]) != metrics_port:
            problems.append(f"{probe}: port {get['port']!r} is not the metrics port {metrics_port}")
    return problems


def test_job_probes_hit_healthz_and_readyz_on_the_metrics_port(docs, job, cfg):
    (container,) = pod_spec(job)["containers"]
    port = cfg.job.metrics_port
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert probe_problems(container, port) == []
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (svc_port,) = one(docs, "Service", "nearline-job")["spec"]["ports"]
    assert svc_port["port"] == port and named_port(container, svc_port["targetPort"]) == port


def test_a_probe_on_the_wrong_path_or_port_is_caught(job, cfg):
    (container,) = pod_spec(job)["containers"]
    wrong_path = _set(container, "readinessProbe.httpGet.path", "/healthz")
    wrong_port = _set(container, "livenessProbe.httpGet.port", 8080)
    unknown_name = _set(container, "livenessProbe.httpGet.port", "http")
    assert probe_problems(wrong_path, cfg.job.metrics_port) == ["readinessProbe: path '/healthz', not /readyz"]
    assert probe_problems(wrong_port, cfg.job.metrics_port) == [
        "livenessProbe: port 8080 is not the metrics port 9464"]
    with pytest.raises(AssertionError, match="not a named port"):
        probe_problems(unknown_name, cfg.job.metrics_port)


def test_job_resources_and_graceful_stop(job):
    spec = pod_spec(job)
    assert 20 <= spec["terminationGracePeriodSeconds"] <= 120  # SIGTERM: finish the batch, commit, stop
    res = spec["containers"][0]["resources"]
    assert set(res) == {"requests", "limits"} and {"cpu", "memory"} <= set(res["requests"]) <= set(res["limits"])


# ---- the standardizers -----------------------------------------------------------------------
def test_one_deployment_per_configured_processor(docs, cfg):
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    by_processor = {}
    for d in deployments:
        (container,) = pod_spec(d)["containers"]
        command = container["command"]
        assert command[:2] == ["nearline", "standardize"] and len(command) == 4, command
        by_processor[option(command, "--processor")] = d
    assert sorted(by_processor) == sorted(cfg.standardizers.processors)
    assert len(deployments) == len(cfg.standardizers.processors)
    assert set(by_processor) <= set(PROCESSORS)  # the CLI's --processor choices
    for p, d in by_processor.items():
        assert d["metadata"]["name"] == f"standardize-{p}"
        assert d["spec"]["replicas"] == 1
        for c in all_containers(d):  # no HTTP endpoint: no HTTP probe
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert "httpGet" not in c.get(probe, {}), (d["metadata"]["name"], c["name"], probe)
        assert 20 <= pod_spec(d)["terminationGracePeriodSeconds"] <= 120


def test_standardizers_get_their_taxonomies(docs, cfg):
    taxonomies = cfg.path(cfg.standardizers.taxonomy_dir)  # /app/data/marketplace
    for d in (d for d in docs if d["kind"] == "Deployment"):
        spec = pod_spec(d)
        (init,) = spec["initContainers"]
        assert init["command"] == ["nearline", "marketplace", "generate", "--preset", "demo"]
        (main,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in (init, main):
            (data,) = [m for m in c["volumeMounts"] if m["name"] == "data"]
            assert taxonomies.is_relative_to(data["mountPath"]), (data["mountPath"], taxonomies)
        assert "emptyDir" in volumes["data"]


# ---- every container: config file, endpoints, Secret, labels ---------------------------------
def test_every_container_gets_the_config_the_endpoints_and_the_optional_secret(docs):
    env_cm = one(docs, "ConfigMap", "nearline-env")["data"]
    config_cm = one(docs, "ConfigMap", "nearline-config")
    config_path = PurePosixPath(env_cm["NEARLINE_CONFIG"])
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    assert len(workloads) == 5
    for w in workloads:
        name = w["metadata"]["name"]
        volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
        match = w["spec"]["selector"]["matchLabels"]
        assert match.items() <= w["spec"]["template"]["metadata"]["labels"].items(), name
        for c in all_containers(w):
            where = f"{name}/{c['name']}"
            assert c["image"] == "nearline:latest", where
            assert {"configMapRef": {"name": "nearline-env"}} in c["envFrom"], where
            mounts = [m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
            assert len(mounts) == 1, f"{where}: nothing mounted at {config_path.parent}"
            assert volumes[mounts[0]["name"]]["configMap"]["name"] == config_cm["metadata"]["name"], where
            assert config_path.name in config_cm["data"]
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
        for c in pod_spec(w)["containers"]:  # the long-running ones talk to Kafka
            env = {e["name"]: e for e in c.get("env", [])}
            ref = env["NEARLINE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref["optional"] is True, name  # PLAINTEXT clusters need no Secret
            assert ref["name"] == "nearline-kafka"
        assert pod_spec(w)["securityContext"]["runAsNonRoot"] is True, name

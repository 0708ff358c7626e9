"""The Helm chart in helm/insitu, rendered by Helm's own engine (helm-python-sdk, offline).

Every rendered object is validated against Kubernetes' OpenAPI schemas in strict mode
(kubernetes-validate), for the default values and for values-production.yaml; the tests
then check what the chart promises: probes, locked-down containers, settings that insitu
reads, secrets only by reference, RBAC limited to what the kubernetes backend does, the
Ingress and PodDisruptionBudget only when asked for, and a schema that refuses bad values.
"""

from __future__ import annotations

import copy
import json
import os
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from insitu.config import Settings

pytestmark = pytest.mark.timeout(120)

CHART = Path(__file__).resolve().parents[1] / "helm" / "insitu"
RELEASE, NAMESPACE = "insitu", "insitu"
# The oldest Kubernetes the chart supports (its kubeVersion) and the newest with schemas here.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Settings the kubernetes backend adds to insitu.config (checked once the section exists).
KUBERNETES_SETTINGS = {"namespace_prefix", "job_service_account", "data_zone", "in_cluster"}

WRITE = ["create", "get", "patch", "delete"]
DASK = ["get", "list", "watch", "create", "delete"]
EXPECTED_RULES = [  # (API group, resources, verbs), in the chart's order
    ("kubernetes.dask.org", ["daskjobs", "daskclusters"], DASK),
    ("", ["pods", "pods/log"], ["get", "list", "watch"]),
    ("", ["events"], ["list", "watch"]),
    ("", ["namespaces"], ["create", "get", "list", "patch"]),
    ("", ["resourcequotas", "limitranges", "serviceaccounts"], WRITE),
    ("networking.k8s.io", ["networkpolicies"], WRITE),
]
# Names of settings that hold secrets, and values that look like credentials.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|DATABASE_URL|PRIVATE", re.I)
CREDENTIAL_VALUE = re.compile(r"://[^/@\s:]+:[^/@\s]+@|AKIA[0-9A-Z]{16}|-----BEGIN")


def values_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text())


PRODUCTION = values_file("values-production.yaml")


@dataclass
class Rendered:
    """One rendering of the chart: the values in force, its Kubernetes objects, its notes."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"expected one {kind} named *{suffix}, got {len(found)}"
        return found[0]

    @property
    def api(self) -> dict[str, Any]:
        return self.one("Deployment", "-api")

    @property
    def dispatcher(self) -> dict[str, Any]:
        return self.one("Deployment", "-dispatcher")

    @property
    def account(self) -> dict[str, Any]:
        """The ServiceAccount of the API and dispatcher (not the store gateways')."""
        return self.one("ServiceAccount", RELEASE)

    @property
    def gateway_account(self) -> dict[str, Any]:
        return self.one("ServiceAccount", "-gateway")

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap")["data"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    """Render offline with Helm's engine, which also checks the values against the schema."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(chart.merge_values(values), objects, notes)


@pytest.fixture(scope="module", params=["default", "production"])
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    return render(chart, None if request.param == "default" else PRODUCTION)


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Rendered:
    return render(chart)


@pytest.fixture(scope="module")
def production(chart: helm.Chart) -> Rendered:
    return render(chart, PRODUCTION)


def containers(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container of every Deployment."""
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield pod, container


# -- every object is valid Kubernetes ---------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_validates_strictly(rendered: Rendered, kube_version: str) -> None:
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "ClusterRole"} <= kinds
    for obj in rendered.objects:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {exc.path}")


def test_strict_validation_catches_an_unknown_field(default: Rendered) -> None:
    """The check above has teeth: a misspelt field is refused."""
    broken = copy.deepcopy(default.api)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"exec": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_lint_finds_nothing_but_the_unfetched_dependency() -> None:
    for values in (None, PRODUCTION):
        report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
        problems = [
            m["error"]
            for m in report["messages"]
            if m["severity"] >= 2 and "missing these dependencies" not in m["error"]
        ]
        assert problems == []


# -- the two Deployments ---------------------------------------------------------------


def test_api_serves_without_dispatcher(rendered: Rendered) -> None:
    container = rendered.api["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["insitu"]
    args = container["args"]
    assert args[:5] == ["server", "--host", "0.0.0.0", "--port", "8000"]
    assert "--no-dispatcher" in args
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_dispatcher_is_one_pod_on_loopback(rendered: Rendered) -> None:
    spec = rendered.dispatcher["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["insitu"]
    args = container["args"]
    assert "--no-dispatcher" not in args
    port = args[args.index("--port") + 1]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "ports" not in container
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["python3", "-c"]
        assert f"http://127.0.0.1:{port}/healthz" in command[2]
    env = {e["name"]: e for e in container["env"]}
    assert env["INSITU_DISPATCHER__ID"]["value"] == rendered.dispatcher["metadata"]["name"]


def test_probes_are_bounded(rendered: Rendered) -> None:
    for _, container in containers(rendered):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert 1 <= container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"]


def test_containers_are_locked_down(rendered: Rendered) -> None:
    for pod, container in containers(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in context


def test_writable_paths_are_empty_dirs(rendered: Rendered) -> None:
    # insitu creates its home and chmods it 700; only the owner may, and a mount point is
    # root's: so the home is a folder inside an emptyDir, not the mount point itself.
    home = Path(rendered.config["INSITU_HOME"])
    for pod, container in containers(rendered):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
        assert home not in mounts
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert Path(env["HOME"]) in mounts  # for libraries that write under ~
        for path in (Path("/tmp"), home.parent):
            assert "emptyDir" in volumes[mounts[path]], path
            assert volumes[mounts[path]]["emptyDir"]["sizeLimit"]


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (enough for comparing two)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1)


def test_resources_are_requested_and_limited(rendered: Rendered) -> None:
    for _, container in containers(rendered):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            limit = quantity(resources["limits"][resource])
            assert 0 < request <= limit, (container["name"], resource)


def test_production_is_sized_above_the_defaults(default: Rendered, production: Rendered) -> None:
    for name in ("api", "dispatcher"):
        small = getattr(default, name)["spec"]["template"]["spec"]["containers"][0]
        large = getattr(production, name)["spec"]["template"]["spec"]["containers"][0]
        for resource in ("cpu", "memory"):
            assert quantity(large["resources"]["requests"][resource]) > quantity(
                small["resources"]["requests"][resource]
            )


def test_pods_use_the_service_account_and_restart_on_config_change(rendered: Rendered) -> None:
    account = rendered.account["metadata"]["name"]
    for deployment in rendered.of_kind("Deployment"):
        template = deployment["spec"]["template"]
        assert template["spec"]["serviceAccountName"] == account
        assert template["spec"]["automountServiceAccountToken"] is True
        assert re.fullmatch(r"[0-9a-f]{64}", template["metadata"]["annotations"]["checksum/config"])


def test_service_selects_only_api_pods(rendered: Rendered) -> None:
    selector = rendered.one("Service")["spec"]["selector"]
    api_labels = rendered.api["spec"]["template"]["metadata"]["labels"]
    dispatcher_labels = rendered.dispatcher["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= api_labels.items()
    assert not selector.items() <= dispatcher_labels.items()
    ports = rendered.one("Service")["spec"]["ports"]
    assert [(p["name"], p["targetPort"]) for p in ports] == [("http", "http")]


# -- settings and secrets --------------------------------------------------------------


def test_database_url_comes_only_from_the_secret(rendered: Rendered) -> None:
    database = rendered.values["database"]
    for _, container in containers(rendered):
        assert container["envFrom"] == [
            {"configMapRef": {"name": rendered.one("ConfigMap")["metadata"]["name"]}}
        ]
        env = {e["name"]: e for e in container["env"]}
        assert env["INSITU_DATABASE_URL"] == {
            "name": "INSITU_DATABASE_URL",
            "valueFrom": {
                "secretKeyRef": {
                    "name": database["existingSecret"],
                    "key": database["secretKey"],
                }
            },
        }
        for name, entry in env.items():
            if SECRET_NAME.search(name):
                assert "value" not in entry, name


def test_storage_keys_come_from_a_secret_when_named(chart: helm.Chart, default: Rendered) -> None:
    rendered = render(chart, {"storage": {"existingSecret": "store-keys"}})
    for _, container in containers(rendered):
        env = {e["name"]: e for e in container["env"]}
        for name, key in (
            ("INSITU_STORAGE__ACCESS_KEY_ID", "access-key-id"),
            ("INSITU_STORAGE__SECRET_ACCESS_KEY", "secret-access-key"),
        ):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "store-keys", "key": key}
    assert "INSITU_STORAGE__ACCESS_KEY_ID" not in json.dumps(default.objects)


def test_the_admin_token_comes_from_a_secret_when_named(
    chart: helm.Chart, default: Rendered
) -> None:
    """Every replica has the same admin token; none is left on one pod's disk."""
    rendered = render(chart, {"adminToken": {"existingSecret": "insitu-admin"}})
    for _, container in containers(rendered):
        env = {e["name"]: e for e in container["env"]}
        reference = env["INSITU_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "insitu-admin", "key": "token"}
    assert "INSITU_ADMIN_TOKEN" not in json.dumps(default.objects)
    assert "get secret insitu-admin" in rendered.notes and "/admin-token" not in rendered.notes
    assert "/admin-token" in default.notes and "adminToken.existingSecret" in default.notes


def test_config_map_holds_no_secret(rendered: Rendered) -> None:
    assert rendered.of_kind("Secret") == []
    for name, value in rendered.config.items():
        assert not SECRET_NAME.search(name), name
        assert not CREDENTIAL_VALUE.search(value), name


def leaves(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar and every empty map or list in a values tree."""
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, list) and tree:
        for index, value in enumerate(tree):
            yield from leaves(value, f"{path}[{index}]")
    else:
        yield path, tree


@pytest.mark.parametrize("name", ["values.yaml", "values-production.yaml"])
def test_values_files_hold_no_secret(name: str) -> None:
    # Names of Secrets and of keys in them are fine; secret material is not.
    allowed = re.compile(r"(existingSecret|secretKey|secretName|imagePullSecrets)$")
    for path, value in leaves(values_file(name)):
        key = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
        if not allowed.search(key):
            assert not re.search(r"password|passwd|secret|token|accesskey|private", key, re.I), path
        assert not CREDENTIAL_VALUE.search(str(value)), path


def test_config_map_is_settings_insitu_reads(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each variable names a real setting, and insitu parses every value."""
    env = dict(rendered.config)
    env.update(
        (e["name"], e["value"])
        for e in rendered.dispatcher["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e and e["name"].startswith("INSITU_")
    )
    assert env["INSITU_BACKEND"] == "kubernetes"
    if "kubernetes" not in typing.get_args(Settings.model_fields["backend"].annotation):
        del env["INSITU_BACKEND"]  # until the kubernetes backend lands in insitu.config
    if "kubernetes" not in Settings.model_fields:
        pending = {k for k in env if k.startswith("INSITU_KUBERNETES__")}
        assert {k.removeprefix("INSITU_KUBERNETES__").lower() for k in pending} <= (
            KUBERNETES_SETTINGS
        )
        for key in pending:
            del env[key]
    for key in env:
        *sections, field = key.removeprefix("INSITU_").lower().split("__")
        model: Any = Settings
        for section in sections:
            model = model.model_fields[section].annotation
        assert field in model.model_fields, f"{key} is not an insitu setting"
    for key in [k for k in os.environ if k.startswith("INSITU_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("INSITU_DATABASE_URL", "postgresql+psycopg://db.invalid/insitu")
    settings = Settings()
    assert str(settings.home) == rendered.config["INSITU_HOME"]
    assert settings.storage.scoping == "sts"
    assert settings.limits.max_result_bytes > 0
    assert settings.dispatcher.id == rendered.dispatcher["metadata"]["name"]


def test_data_zone_reaches_the_jobs(production: Rendered) -> None:
    zone = production.values["kubernetes"]["dataZone"]
    assert production.config["INSITU_KUBERNETES__DATA_ZONE"] == zone
    affinity = production.api["spec"]["template"]["spec"]["affinity"]
    assert zone in json.dumps(affinity["nodeAffinity"])


# -- ServiceAccount, RBAC and admission ------------------------------------------------


def test_irsa_annotation(default: Rendered, production: Rendered, chart: helm.Chart) -> None:
    assert "annotations" not in default.account["metadata"]
    annotations = production.account["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == PRODUCTION["serviceAccount"]["roleArn"]
    role = "arn:aws:iam::111122223333:role/insitu-test"
    rendered = render(chart, {"serviceAccount": {"roleArn": role, "annotations": {"a": "b"}}})
    assert rendered.account["metadata"]["annotations"] == {
        "a": "b",
        "eks.amazonaws.com/role-arn": role,
    }


def test_cluster_role_has_exactly_the_backends_rules(rendered: Rendered) -> None:
    rules = rendered.one("ClusterRole")["rules"]
    assert [(r["apiGroups"], r["resources"], r["verbs"]) for r in rules] == [
        ([group], resources, verbs) for group, resources, verbs in EXPECTED_RULES
    ]
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert "*" not in json.dumps(rule)
        assert "secrets" not in rule["resources"]
    # In its own namespace, a Role for the store gateways' objects, and nothing more.
    (role,) = rendered.of_kind("Role")
    assert [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]] == [
        ([""], ["pods", "services", "secrets"], ["get", "list", "create", "delete"]),
        ([""], ["services/proxy"], ["get", "create"]),
    ]
    (binding,) = rendered.of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": rendered.account["metadata"]["name"],
         "namespace": NAMESPACE}
    ]  # fmt: skip


def test_store_gateways_get_the_data_role_and_jobs_none(
    default: Rendered, production: Rendered
) -> None:
    """Job pods reach the store only through their gateway, which alone holds the role."""
    gateway = production.gateway_account
    assert gateway["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": PRODUCTION["gateway"]["roleArn"]
    }
    assert gateway["automountServiceAccountToken"] is False
    assert "annotations" not in default.gateway_account["metadata"]
    config = production.config
    assert config["INSITU_KUBERNETES__GATEWAY_SERVICE_ACCOUNT"] == "insitu-gateway"
    assert config["INSITU_KUBERNETES__PLATFORM_NAMESPACE"] == NAMESPACE
    image = production.api["spec"]["template"]["spec"]["containers"][0]["image"]
    assert config["INSITU_KUBERNETES__GATEWAY_IMAGE"] == image
    labels = json.loads(config["INSITU_KUBERNETES__SERVER_POD_LABELS"])
    selector = production.api["spec"]["selector"]["matchLabels"]
    assert labels.items() <= selector.items() and labels  # the gateways let these pods in
    assert not any("JOB_ROLE" in key and "KUBERNETES" in key for key in config)


def test_cluster_role_is_bound_to_the_pods_service_account(rendered: Rendered) -> None:
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rendered.one("ClusterRole")["metadata"]["name"],
    }
    account = rendered.account["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


def test_admission_policy_confines_every_write_to_tenant_namespaces(rendered: Rendered) -> None:
    policy = rendered.one("ValidatingAdmissionPolicy")
    spec = policy["spec"]
    account = rendered.account["metadata"]["name"]
    assert [c["expression"] for c in spec["matchConditions"]] == [
        f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{account}'"
    ]
    prefix = rendered.config["INSITU_KUBERNETES__NAMESPACE_PREFIX"]
    assert [v["expression"] for v in spec["validations"]] == [
        f"variables.target.startsWith('{prefix}') || (variables.target == '{NAMESPACE}' "
        "&& request.resource.resource == 'networkpolicies')"
    ]
    covered = {
        (group, resource)
        for rule in spec["matchConstraints"]["resourceRules"]
        if {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    writes = {"create", "update", "patch", "delete"}
    for rule in rendered.one("ClusterRole")["rules"]:
        if writes & set(rule["verbs"]):
            for resource in rule["resources"]:
                assert (rule["apiGroups"][0], resource) in covered, resource
    binding = rendered.one("ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_admission_policy_can_be_left_out(chart: helm.Chart) -> None:
    rendered = render(chart, {"rbac": {"restrictToTenantNamespaces": False}})
    assert rendered.of_kind("ValidatingAdmissionPolicy") == []
    assert rendered.of_kind("ValidatingAdmissionPolicyBinding") == []


# -- Ingress and PodDisruptionBudget ---------------------------------------------------


def test_no_ingress_or_pdb_by_default(default: Rendered) -> None:
    assert default.of_kind("Ingress") == []
    assert default.of_kind("PodDisruptionBudget") == []
    assert default.config["INSITU_URL"] == f"http://{RELEASE}.{NAMESPACE}.svc:80"


def test_production_ingress_has_tls_for_every_host(production: Rendered) -> None:
    ingress = production.one("Ingress")["spec"]
    assert ingress["ingressClassName"] == PRODUCTION["ingress"]["className"]
    hosts = [rule["host"] for rule in ingress["rules"]]
    assert hosts == PRODUCTION["ingress"]["hosts"]
    assert set(hosts) <= {h for tls in ingress["tls"] for h in tls["hosts"]}
    service = production.one("Service")["metadata"]["name"]
    for rule in ingress["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": service, "port": {"name": "http"}}
    assert production.config["INSITU_URL"] == PRODUCTION["url"].rstrip("/")


def test_ingress_url_follows_tls(chart: helm.Chart) -> None:
    ingress = {"enabled": True, "hosts": ["insitu.example.org"]}
    plain = render(chart, {"ingress": ingress})
    assert plain.config["INSITU_URL"] == "http://insitu.example.org"
    tls = [{"secretName": "insitu-tls", "hosts": ["insitu.example.org"]}]
    secure = render(chart, {"ingress": {**ingress, "tls": tls}})
    assert secure.config["INSITU_URL"] == "https://insitu.example.org"
    assert "ingressClassName" not in secure.one("Ingress")["spec"]


def test_production_keeps_api_pods_through_disruptions(production: Rendered) -> None:
    replicas = production.api["spec"]["replicas"]
    assert replicas >= 2
    pdb = production.one("PodDisruptionBudget")["spec"]
    assert 1 <= pdb["minAvailable"] < replicas
    assert pdb["selector"]["matchLabels"] == production.api["spec"]["selector"]["matchLabels"]


# -- the values schema -----------------------------------------------------------------


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


def test_schema_is_a_valid_json_schema(chart: helm.Chart) -> None:
    validator = jsonschema.validators.validator_for(schema())
    validator.check_schema(schema())
    validator(schema()).validate(values_file("values.yaml"))
    validator(schema()).validate(chart.merge_values(PRODUCTION))


def subschemas(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from subschemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from subschemas(value, f"{path}/{index}")


def test_schema_is_strict_and_describes_every_value() -> None:
    for path, node in subschemas(schema()):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, prop in node["properties"].items():
                assert prop.get("description"), f"{path}/properties/{key} is not described"
    # and every value in values.yaml has a place in the schema
    root = schema()
    for path, _ in leaves(values_file("values.yaml")):
        node = root
        for key in re.sub(r"\[\d+\]", "", path).split("."):
            node = node.get("properties", {}).get(key) or {}
            if "$ref" in node:
                node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        assert node, f"{path} is not in the schema"


BAD_VALUES = [
    pytest.param({"api": {"replicas": -1}}, id="negative-replicas"),
    pytest.param({"api": {"replicas": 0}}, id="zero-replicas"),
    pytest.param({"replicaCount": 2}, id="unknown-key"),
    pytest.param({"api": {"resources": {"limits": {"cpu": "1", "memory": "1Gi", "gpu": 1}}}},
                 id="unknown-nested-key"),
    pytest.param({"api": {"resources": {"requests": {"memory": None}}}}, id="no-memory-request"),
    pytest.param({"database": {"existingSecret": ""}}, id="no-database-secret"),
    pytest.param({"database": {"password": "hunter2"}}, id="password-in-values"),
    pytest.param({"storage": {"scoping": "keys"}}, id="unknown-scoping"),
    pytest.param({"storage": {"workspaceUrl": "/srv/jobs"}}, id="workspace-not-s3"),
    pytest.param({"limits": {"maxTimeout": "forever"}}, id="bad-duration"),
    pytest.param({"limits": {"maxResultBytes": "lots"}}, id="bad-size"),
    pytest.param({"serviceAccount": {"roleArn": "insitu-platform"}}, id="bad-role-arn"),
    pytest.param({"podSecurityContext": {"runAsUser": 0}}, id="root"),
    pytest.param({"ingress": {"hosts": ["Not A Host"]}}, id="bad-host"),
    pytest.param({"dispatcher": {"replicas": 2}}, id="dispatcher-replicas"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_engine_refuses_bad_values(chart: helm.Chart, bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="schema"):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    merged = chart.merge_values(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, schema())


def test_pdb_that_would_block_every_drain_is_refused(chart: helm.Chart) -> None:
    pdb = {"enabled": True, "minAvailable": 2}
    with pytest.raises(helm.HelmRenderError, match=r"must be below api\.replicas"):
        chart.render({"api": {"replicas": 2, "podDisruptionBudget": pdb}}, name=RELEASE)
    assert render(chart, {"api": {"replicas": 3, "podDisruptionBudget": pdb}}).of_kind(
        "PodDisruptionBudget"
    )


def test_ingress_without_hosts_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="at least one host"):
        chart.render({"ingress": {"enabled": True}}, name=RELEASE)


# -- the operator dependency and the notes ---------------------------------------------


def test_operator_is_a_conditional_dependency(chart: helm.Chart) -> None:
    # Read from disk: rendering drops disabled dependencies from a loaded chart's metadata.
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert metadata["apiVersion"] == "v2"
    assert [(d["name"], d["repository"], d["condition"]) for d in metadata["dependencies"]] == [
        ("dask-kubernetes-operator", "https://helm.dask.org", "daskOperator.enabled")
    ]
    # Helm sees it too: "missing" until `helm dependency update` fetches it into charts/.
    listed = helm.dependency_list(CHART)
    assert [d["name"] for d in listed] == ["dask-kubernetes-operator"]
    assert listed[0]["status"] in {"missing", "ok"}
    # Rendered offline, so the operator is off in both values files.
    assert chart.values["daskOperator"]["enabled"] is False
    assert PRODUCTION["daskOperator"]["enabled"] is False


def test_notes_tell_how_to_get_the_admin_token_and_run_a_job(rendered: Rendered) -> None:
    assert f"{rendered.config['INSITU_HOME']}/admin-token" in rendered.notes
    if rendered.values["ingress"]["enabled"]:
        assert f"export INSITU_URL={rendered.config['INSITU_URL']}" in rendered.notes
    else:
        assert f"port-forward service/{rendered.one('Service')['metadata']['name']}" in (
            rendered.notes
        )
    assert "insitu submit" in rendered.notes
    assert "insitu results" in rendered.notes


# -- several API replicas share their state ---------------------------------------------


def _settings_of(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an API pod of ``rendered`` starts with."""
    for key in [k for k in os.environ if k.startswith("INSITU_")]:
        monkeypatch.delenv(key)
    for key, value in rendered.config.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_api_replica_keeps_bundles_and_logs_where_the_others_find_them(
    chart: helm.Chart, replicas: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bundles and kept logs are in the object store, never in a pod's emptyDir: a job
    submitted through one replica runs with a bundle uploaded through another, and its
    log reads the same from all of them once its pods are gone."""
    from insitu.backends.kubernetes_backend import check_pods_reach
    from insitu.objectstore import state_store
    from insitu.services.bundles import BundleStore

    api = {**PRODUCTION["api"], "replicas": replicas}
    if replicas == 1:  # one pod cannot keep one available while it is evicted
        api["podDisruptionBudget"] = {"enabled": False}
    rendered = render(chart, {**PRODUCTION, "api": api})
    assert rendered.api["spec"]["replicas"] == replicas
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
    settings = _settings_of(rendered, monkeypatch)
    check_pods_reach(settings)  # the server would refuse to start otherwise
    home = settings.home.as_uri()
    for store in (BundleStore(settings).store, state_store(settings, "logs")):
        assert store.url.startswith(PRODUCTION["storage"]["workspaceUrl"] + "/_server/")
        assert not store.url.startswith(home)
    mounted = {m["mountPath"] for _, c in containers(rendered) for m in c["volumeMounts"]}
    assert not any(store.url.startswith(f"file://{path}") for path in mounted)
    state = {**PRODUCTION["storage"], "stateUrl": "s3://insitu-state/api"}
    named = render(chart, {**PRODUCTION, "storage": state})
    assert _settings_of(named, monkeypatch).resolved_state_url == "s3://insitu-state/api"


def test_a_state_url_on_a_pod_s_disk_is_refused(chart: helm.Chart) -> None:
    values = {"storage": {**PRODUCTION["storage"], "stateUrl": "file:///var/lib/insitu/home"}}
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError), match="stateUrl"):
        chart.render({**PRODUCTION, **values}, name=RELEASE)

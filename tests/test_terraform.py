"""The AWS deployment in ``terraform/``: its structure, its checkov scan, its ``terraform test``.

Every ``.tf`` file is parsed with python-hcl2 and the properties the deployment promises are
asserted on the parsed blocks: no AWS account or network is needed. checkov then scans the folder
once per session and must report no failed check (each suppression carries its reason next to the
resource). Where a ``terraform`` binary and the AWS provider are at hand, ``terraform validate``
and ``terraform test`` (a mocked provider) run too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest

from helpers import missing
from insitu.credentials import session_policy

pytestmark = [pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
CHECKOV = os.environ.get(
    "INSITU_CHECKOV", str(ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov")
)
PLUGIN_DIR = os.environ.get("INSITU_TERRAFORM_PLUGIN_DIR", "/opt/tf-plugins")

CONTROL_PLANE_LOGS = {"api", "audit", "authenticator", "controllerManager", "scheduler"}
BUCKETS = ("data", "results", "logs")
SKIP_COMMENT = re.compile(r"#\s*checkov:skip=(CKV2?_AWS_\d+):(.*)")


# -- parsing -----------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """python-hcl2's output without its bookkeeping keys and with string literals unquoted."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass
class Config:
    """The blocks of every ``.tf`` file, by kind, type and name, and the file each came from."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # "aws_vpc.this" -> "network.tf"

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        assert name in self.resources.get(rtype, {}), f"resource {rtype}.{name} is missing"
        return self.resources[rtype][name]

    def policy(self, name: str) -> list[dict[str, Any]]:
        """The statements of ``data.aws_iam_policy_document.<name>``."""
        documents = self.data.get("aws_iam_policy_document", {})
        assert name in documents, f"policy document {name} is missing"
        return list(documents[name].get("statement", []))


def load(directory: Path = TERRAFORM) -> Config:
    """Parse every ``.tf`` file of ``directory`` (not its tests) into one :class:`Config`."""
    config = Config()
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            parsed = _clean(hcl2.load(handle))
        for kind, store in (("resource", config.resources), ("data", config.data)):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in store.get(rtype, {}), f"{rtype}.{name} declared twice"
                        store.setdefault(rtype, {})[name] = body
                        config.files[f"{rtype}.{name}"] = path.name
        for entry in parsed.get("variable", []):
            config.variables.update(entry)
        for entry in parsed.get("output", []):
            config.outputs.update(entry)
        for entry in parsed.get("locals", []):
            config.locals.update(entry)
        config.terraform.extend(parsed.get("terraform", []))
    return config


@pytest.fixture(scope="module")
def tf() -> Config:
    """The parsed configuration, once per module."""
    return load()


def one(block: Any) -> dict[str, Any]:
    """The single nested block python-hcl2 returns as a list of one."""
    assert isinstance(block, list) and len(block) == 1, block
    return dict(block[0])


def default(tf: Config, variable: str) -> Any:
    assert variable in tf.variables, f"variable {variable} is missing"
    return tf.variables[variable].get("default")


def condition(statement: dict[str, Any], variable: str) -> dict[str, Any]:
    matches = [c for c in statement.get("condition", []) if c["variable"].endswith(variable)]
    assert len(matches) == 1, f"statement {statement.get('sid')} has no condition on {variable}"
    return matches[0]


# -- layout, providers, variables --------------------------------------------------------------


def test_each_file_holds_one_part_of_the_deployment(tf: Config) -> None:
    homes = {
        "aws_vpc.this": "network.tf",
        "aws_vpc_endpoint.s3": "network.tf",
        "aws_flow_log.vpc": "network.tf",
        "aws_s3_bucket.data": "storage.tf",
        "aws_s3_bucket.results": "storage.tf",
        "aws_s3_bucket.logs": "logs.tf",
        "aws_kms_key.this": "kms.tf",
        "aws_eks_cluster.this": "eks.tf",
        "aws_eks_node_group.cpu_workers": "eks.tf",
        "aws_iam_openid_connect_provider.eks": "iam.tf",
        "aws_iam_role.api": "iam.tf",
        "aws_iam_role.job": "iam.tf",
        "aws_db_instance.jobs": "database.tf",
    }
    for address, file in homes.items():
        assert tf.files.get(address) == file, f"{address} belongs in {file}"
    assert not any(TERRAFORM.rglob("*.tfstate")), "state must never be committed"


def test_aws_provider_is_pinned_to_major_5_without_registry_modules(tf: Config) -> None:
    providers = one(one(tf.terraform)["required_providers"])
    assert providers["aws"]["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5(\.\d+)*", providers["aws"]["version"])
    for path in TERRAFORM.glob("*.tf"):
        assert not re.search(r"^\s*module\s+\"", path.read_text(), re.M), path.name


def test_every_variable_is_described_and_validated(tf: Config) -> None:
    for name, spec in tf.variables.items():
        assert len(spec.get("description", "")) > 20, f"variable {name} needs a description"
        if spec.get("type") not in ("bool", "${map(string)}", "map(string)"):
            assert spec.get("validation"), f"variable {name} needs a validation"


def test_tfvars_example_sets_declared_variables_and_every_required_one(tf: Config) -> None:
    example = TERRAFORM / "terraform.tfvars.example"
    with example.open() as handle:
        values = _clean(hcl2.load(handle))
    assert set(values) <= set(tf.variables), set(values) - set(tf.variables)
    required = {name for name, spec in tf.variables.items() if "default" not in spec}
    assert required == {"region", "availability_zones", "data_availability_zone"}
    assert required <= set(values)
    assert values["data_availability_zone"] in values["availability_zones"]


# -- storage -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_blocks_public_access_and_is_versioned(tf: Config, bucket: str) -> None:
    target = f"${{aws_s3_bucket.{bucket}.id}}"
    block = tf.resource("aws_s3_bucket_public_access_block", bucket)
    assert block["bucket"] == target
    for setting in ("block_public_acls", "block_public_policy", "ignore_public_acls"):
        assert block[setting] is True, setting
    assert block["restrict_public_buckets"] is True
    versioning = tf.resource("aws_s3_bucket_versioning", bucket)
    assert versioning["bucket"] == target
    assert one(versioning["versioning_configuration"])["status"] == "Enabled"
    ownership = tf.resource("aws_s3_bucket_ownership_controls", bucket)
    assert one(ownership["rule"])["object_ownership"] == "BucketOwnerEnforced"


@pytest.mark.parametrize("bucket", ["data", "results"])
def test_bucket_is_encrypted_with_our_rotating_kms_key_and_logged(tf: Config, bucket: str) -> None:
    sse = tf.resource("aws_s3_bucket_server_side_encryption_configuration", bucket)
    rule = one(sse["rule"])
    default_sse = one(rule["apply_server_side_encryption_by_default"])
    assert default_sse["sse_algorithm"] == "aws:kms"
    assert default_sse["kms_master_key_id"] == '${aws_kms_key.this["s3"].arn}'
    assert rule["bucket_key_enabled"] is True
    key = tf.resource("aws_kms_key", "this")
    assert key["enable_key_rotation"] is True
    assert "s3" in tf.locals["kms_keys"]
    logging = tf.resource("aws_s3_bucket_logging", bucket)
    assert logging["target_bucket"] == "${aws_s3_bucket.logs.id}"


def test_every_bucket_policy_denies_requests_without_tls(tf: Config) -> None:
    tls_only = {
        "data": '${data.aws_iam_policy_document.tls_only["data"].json}',
        "results": '${data.aws_iam_policy_document.tls_only["results"].json}',
        "logs": "${data.aws_iam_policy_document.logs.json}",
    }
    for bucket, policy in tls_only.items():
        assert tf.resource("aws_s3_bucket_policy", bucket)["policy"] == policy
    for document in ("tls_only", "logs"):
        deny = [s for s in tf.policy(document) if s.get("sid") == "DenyInsecureTransport"]
        assert len(deny) == 1, document
        assert deny[0]["effect"] == "Deny" and deny[0]["actions"] == ["s3:*"]
        secure = condition(deny[0], "aws:SecureTransport")
        assert secure["test"] == "Bool" and secure["values"] == ["false"]
        assert one(deny[0]["principals"])["identifiers"] == ["*"]


def test_results_expire_and_incomplete_uploads_are_aborted(tf: Config) -> None:
    rules = {
        r["id"]: r for r in tf.resource("aws_s3_bucket_lifecycle_configuration", "results")["rule"]
    }
    expire = rules["expire-job-results"]
    assert expire["status"] == "Enabled"
    assert one(expire["filter"])["prefix"] == "${local.results_prefix}/"
    assert one(expire["expiration"])["days"] == "${var.results_retention_days}"
    assert "noncurrent_version_expiration" in expire, "old versions of results must expire too"
    assert default(tf, "results_retention_days") >= 1
    abort = rules["abort-incomplete-uploads"]
    assert abort["status"] == "Enabled" and one(abort["filter"]) == {}
    days = one(abort["abort_incomplete_multipart_upload"])["days_after_initiation"]
    assert days == "${var.incomplete_upload_days}"
    data_rules = tf.resource("aws_s3_bucket_lifecycle_configuration", "data")["rule"]
    assert any("abort_incomplete_multipart_upload" in r for r in data_rules)


# -- network -----------------------------------------------------------------------------------


def test_s3_gateway_endpoint_serves_every_private_route_table(tf: Config) -> None:
    endpoint = tf.resource("aws_vpc_endpoint", "s3")
    assert endpoint["vpc_endpoint_type"] == "Gateway"
    assert endpoint["service_name"] == "com.amazonaws.${var.region}.s3"
    assert endpoint["vpc_id"] == "${aws_vpc.this.id}"
    assert endpoint["route_table_ids"] == "${aws_route_table.private[*].id}"
    private_tables = tf.resource("aws_route_table", "private")
    assert private_tables["count"] == "${local.az_count}"
    association = tf.resource("aws_route_table_association", "private")
    assert association["subnet_id"] == "${aws_subnet.private[count.index].id}"
    assert association["route_table_id"] == "${aws_route_table.private[count.index].id}"


def test_private_subnets_leave_through_nat_one_per_zone_by_default(tf: Config) -> None:
    subnets = tf.resource("aws_subnet", "private")
    assert subnets["availability_zone"] == "${var.availability_zones[count.index]}"
    assert "map_public_ip_on_launch" not in subnets or subnets["map_public_ip_on_launch"] is False
    assert tf.resource("aws_subnet", "public")["map_public_ip_on_launch"] is False
    route = tf.resource("aws_route", "private_nat")
    assert route["destination_cidr_block"] == "0.0.0.0/0"
    assert "nat_gateway_id" in route and "gateway_id" not in route
    assert tf.locals["nat_count"] == "${var.nat_gateway_per_az ? local.az_count : 1}"
    assert default(tf, "nat_gateway_per_az") is True


def test_vpc_flow_logs_and_an_unusable_default_security_group(tf: Config) -> None:
    flow = tf.resource("aws_flow_log", "vpc")
    assert flow["vpc_id"] == "${aws_vpc.this.id}" and flow["traffic_type"] == "ALL"
    assert flow["log_destination"].startswith("${aws_s3_bucket.logs.arn}/")
    default_sg = tf.resource("aws_default_security_group", "this")
    assert "ingress" not in default_sg and "egress" not in default_sg


# -- EKS ---------------------------------------------------------------------------------------


def test_cluster_is_private_encrypted_and_logs_its_control_plane(tf: Config) -> None:
    cluster = tf.resource("aws_eks_cluster", "this")
    vpc = one(cluster["vpc_config"])
    assert vpc["endpoint_private_access"] is True
    assert vpc["endpoint_public_access"] == "${var.cluster_endpoint_public_access}"
    assert default(tf, "cluster_endpoint_public_access") is False
    assert vpc["subnet_ids"] == "${aws_subnet.private[*].id}"
    encryption = one(cluster["encryption_config"])
    assert encryption["resources"] == ["secrets"]
    assert one(encryption["provider"])["key_arn"] == '${aws_kms_key.this["eks"].arn}'
    assert cluster["enabled_cluster_log_types"] == "${local.control_plane_log_types}"
    assert set(tf.locals["control_plane_log_types"]) == CONTROL_PLANE_LOGS
    log_group = tf.resource("aws_cloudwatch_log_group", "cluster")
    assert log_group["name"] == "/aws/eks/${local.cluster_name}/cluster"
    assert "kms_key_id" in log_group


def test_node_groups_sit_in_the_data_zone(tf: Config) -> None:
    groups = tf.resources["aws_eks_node_group"]
    assert set(groups) == {"system", "cpu_workers", "gpu_workers"}
    for name, group in groups.items():
        assert group["subnet_ids"] == ["${local.data_subnet_id}"], name
    assert tf.locals["data_subnet_id"] == "${aws_subnet.private[local.data_az_index].id}"
    assert "var.data_availability_zone" in tf.locals["data_az_index"]
    assert "var.availability_zones" in tf.locals["data_az_index"]
    # ... and a data zone outside the VPC's zones is refused in words, not by an index error.
    precondition = one(one(tf.resource("aws_vpc", "this")["lifecycle"])["precondition"])
    assert precondition["condition"] == (
        "${contains(var.availability_zones, var.data_availability_zone)}"
    )


def test_system_nodes_are_on_demand_and_workers_spot_with_the_backends_label_and_taint(
    tf: Config,
) -> None:
    system = tf.resource("aws_eks_node_group", "system")
    assert system["capacity_type"] == "ON_DEMAND"
    assert system["node_group_name"] == "system"
    cpu = tf.resource("aws_eks_node_group", "cpu_workers")
    assert cpu["node_group_name"] == "cpu-workers"
    assert cpu["capacity_type"] == "SPOT"
    assert cpu["labels"] == "${local.cpu_worker_labels}"
    assert tf.locals["cpu_worker_labels"] == {"insitu.io/pool": "cpu-spot"}
    taint = one(cpu["taint"])
    assert (taint["key"], taint["value"], taint["effect"]) == (
        "insitu.io/spot",
        "true",
        "NO_SCHEDULE",
    )


def test_gpu_workers_are_optional_tainted_and_absent_by_default(tf: Config) -> None:
    gpu = tf.resource("aws_eks_node_group", "gpu_workers")
    assert gpu["node_group_name"] == "gpu-workers"
    assert gpu["count"] == "${var.gpu_worker_node_group.max_size > 0 ? 1 : 0}"
    assert "max_size = optional(number, 0)" in tf.variables["gpu_worker_node_group"]["type"]
    taint = one(gpu["taint"])
    assert (taint["key"], taint["value"], taint["effect"]) == (
        "nvidia.com/gpu",
        "true",
        "NO_SCHEDULE",
    )
    assert "NVIDIA" in gpu["ami_type"]


def test_nodes_require_imdsv2_with_one_hop_so_pods_cannot_borrow_the_node_role(tf: Config) -> None:
    template = tf.resource("aws_launch_template", "node")
    metadata = one(template["metadata_options"])
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 1
    assert one(one(template["block_device_mappings"])["ebs"])["encrypted"] is True
    for name, group in tf.resources["aws_eks_node_group"].items():
        assert "aws_launch_template.node[" in one(group["launch_template"])["id"], name


# -- IAM ---------------------------------------------------------------------------------------


def test_api_role_trusts_only_the_api_service_account(tf: Config) -> None:
    assert tf.locals["api_subject"] == (
        "system:serviceaccount:${var.api_namespace}:${var.api_service_account}"
    )
    assert (default(tf, "api_namespace"), default(tf, "api_service_account")) == (
        "insitu",
        "insitu-api",
    )
    (statement,) = tf.policy("api_assume")
    assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    principal = one(statement["principals"])
    assert principal == {
        "type": "Federated",
        "identifiers": ["${aws_iam_openid_connect_provider.eks.arn}"],
    }
    sub = condition(statement, ":sub")
    assert sub["test"] == "StringEquals" and sub["values"] == ["${local.api_subject}"]
    assert condition(statement, ":aud")["values"] == ["sts.amazonaws.com"]
    assert tf.resource("aws_iam_role", "api")["assume_role_policy"] == (
        "${data.aws_iam_policy_document.api_assume.json}"
    )


def test_api_role_reads_the_catalog_writes_results_and_issues_job_sessions(tf: Config) -> None:
    statements = {s["sid"]: s for s in tf.policy("api")}
    assert "s3:ListBucket" in statements["ListDataBucket"]["actions"]
    assert statements["ListDataBucket"]["resources"] == ["${aws_s3_bucket.data.arn}"]
    assert statements["ReadData"]["resources"] == ["${aws_s3_bucket.data.arn}/*"]
    assert all(a.startswith("s3:Get") for a in statements["ReadData"]["actions"])
    write = statements["ReadWriteResults"]
    assert {"s3:GetObject", "s3:PutObject"} <= set(write["actions"])
    assert write["resources"] == ["${aws_s3_bucket.results.arn}/*"]
    issue = statements["IssueJobCredentials"]
    assert set(issue["actions"]) == {"sts:AssumeRole", "sts:TagSession"}
    assert issue["resources"] == ["${aws_iam_role.job.arn}"]
    # Nothing but the results bucket is writable.
    for sid, statement in statements.items():
        writes = [a for a in statement["actions"] if a in ("s3:PutObject", "s3:DeleteObject")]
        if writes:
            assert statement["resources"] == ["${aws_s3_bucket.results.arn}/*"], sid
    assert tf.resource("aws_iam_role_policy", "api")["role"] == "${aws_iam_role.api.id}"


def test_job_role_is_trusted_by_the_api_role_and_the_store_gateways_only(tf: Config) -> None:
    """No job pod may assume it: job service accounts have no trust statement at all."""
    statements = {s["sid"]: s for s in tf.policy("job_assume")}
    assert set(statements) == {"ApiIssuesScopedSessions", "StoreGatewayServiceAccount"}
    api = statements["ApiIssuesScopedSessions"]
    assert one(api["principals"]) == {"type": "AWS", "identifiers": ["${aws_iam_role.api.arn}"]}
    assert set(api["actions"]) == {"sts:AssumeRole", "sts:TagSession"}
    irsa = statements["StoreGatewayServiceAccount"]
    assert irsa["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    sub = condition(irsa, ":sub")
    assert sub["test"] == "StringEquals" and sub["values"] == ["${local.gateway_subject}"]
    subject = tf.locals["gateway_subject"]
    for variable in ("api_namespace", "gateway_service_account"):
        subject = subject.replace(f"${{var.{variable}}}", default(tf, variable))
    assert subject == "system:serviceaccount:insitu:insitu-gateway"
    assert "job_subject" not in tf.locals
    assert condition(irsa, ":aud")["values"] == ["sts.amazonaws.com"]
    assert tf.resource("aws_iam_role", "job")["assume_role_policy"] == (
        "${data.aws_iam_policy_document.job_assume.json}"
    )


def test_job_role_policy_is_prefix_scoped(tf: Config) -> None:
    assert tf.locals["data_prefix_arn"] == "${aws_s3_bucket.data.arn}/${local.data_prefix}/*"
    assert tf.locals["jobs_prefix_arn"] == "${aws_s3_bucket.results.arn}/${local.results_prefix}/*"
    assert tf.locals["data_prefix"] == '${trim(var.data_prefix, "/")}'
    assert tf.locals["results_prefix"] == '${trim(var.results_prefix, "/")}'
    assert (default(tf, "data_prefix"), default(tf, "results_prefix")) == ("datasets/", "jobs/")
    statements = tf.policy("job")
    for statement in statements:
        sid = statement["sid"]
        assert statement.get("effect", "Allow") == "Allow", sid
        assert "*" not in statement["resources"], sid
        s3_actions = [a for a in statement["actions"] if a.startswith("s3:")]
        assert "s3:*" not in s3_actions, sid
        if "s3:ListBucket" in s3_actions:
            assert s3_actions == ["s3:ListBucket"], sid
            prefix = condition(statement, "s3:prefix")
            assert prefix["test"] == "StringLike", sid
            local = {"${aws_s3_bucket.data.arn}": "data", "${aws_s3_bucket.results.arn}": "results"}
            (bucket,) = (local[r] for r in statement["resources"])
            expected = "${local.data_prefix}" if bucket == "data" else "${local.results_prefix}"
            assert prefix["values"] == [f"{expected}/", f"{expected}/*"], sid
        elif s3_actions:
            (resource,) = statement["resources"]
            assert resource in ("${local.data_prefix_arn}", "${local.jobs_prefix_arn}"), sid
            if resource == "${local.data_prefix_arn}":
                assert all(a.startswith("s3:Get") for a in s3_actions), f"{sid} writes data"
        else:
            assert statement["resources"] == ['${aws_kms_key.this["s3"].arn}'], sid
            assert condition(statement, "kms:ViaService")["values"] == [
                "s3.${var.region}.${local.dns_suffix}"
            ]
    actions = {a for s in statements for a in s["actions"]}
    assert "s3:GetObject" in actions and "s3:PutObject" in actions


def test_job_role_allows_every_s3_action_the_dispatchers_session_policy_asks_for(
    tf: Config,
) -> None:
    """Session rights are the intersection of role and session policy: the role must cover it."""
    policy = session_policy("s3://data/datasets/ophys/s1.zarr", "s3://results/jobs/j-1")
    role = {s["sid"]: set(s["actions"]) for s in tf.policy("job")}
    asked = {s["Sid"]: set(s["Action"]) for s in policy["Statement"]}
    assert asked["ReadDataset"] <= role["ReadDatasets"]
    assert asked["UseWorkspace"] <= role["UseJobWorkspaces"]
    assert asked["ListReadDataset"] <= role["ListDatasets"]
    assert asked["ListUseWorkspace"] <= role["ListJobWorkspaces"]


def test_session_policy_lets_jobs_use_the_bucket_key() -> None:
    policy = session_policy("s3://data/datasets/ophys/s1.zarr", "s3://results/jobs/j-1")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"kms:Decrypt", "kms:GenerateDataKey"} <= actions


# -- database ----------------------------------------------------------------------------------


def test_database_is_private_encrypted_protected_and_backed_up(tf: Config) -> None:
    db = tf.resource("aws_db_instance", "jobs")
    assert db["engine"] == "postgres"
    assert db["publicly_accessible"] is False
    assert db["storage_encrypted"] is True
    assert db["kms_key_id"] == '${aws_kms_key.this["rds"].arn}'
    assert db["deletion_protection"] is True
    assert db["skip_final_snapshot"] is False
    assert db["backup_retention_period"] == "${var.database_backup_retention_days}"
    assert default(tf, "database_backup_retention_days") >= 7
    assert db["iam_database_authentication_enabled"] is True
    assert db["manage_master_user_password"] is True
    assert "password" not in db
    assert db["db_subnet_group_name"] == "${aws_db_subnet_group.jobs.name}"
    subnet_group = tf.resource("aws_db_subnet_group", "jobs")
    assert subnet_group["subnet_ids"] == "${aws_subnet.private[*].id}"


def test_database_accepts_connections_only_from_the_eks_nodes(tf: Config) -> None:
    db = tf.resource("aws_db_instance", "jobs")
    assert db["vpc_security_group_ids"] == ["${aws_security_group.database.id}"]
    group = tf.resource("aws_security_group", "database")
    assert "ingress" not in group and "egress" not in group
    rules = tf.resources.get("aws_vpc_security_group_ingress_rule", {})
    assert set(rules) == {"database_from_nodes"}
    rule = rules["database_from_nodes"]
    assert rule["security_group_id"] == "${aws_security_group.database.id}"
    assert rule["referenced_security_group_id"] == "${local.db_cluster_sgid}"
    assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule
    assert (rule["from_port"], rule["to_port"]) == (5432, 5432)
    assert tf.locals["db_cluster_sgid"] == (
        "${aws_eks_cluster.this.vpc_config[0].cluster_security_group_id}"
    )
    assert "aws_vpc_security_group_egress_rule" not in tf.resources


# -- outputs and docs --------------------------------------------------------------------------


def helm_keys(tf: Config) -> set[str]:
    """``section.key`` of every value in the ``helm_values`` output."""
    values = tf.outputs["helm_values"]["value"]
    return {f"{section}.{key}" for section, keys in values.items() for key in keys}


def test_outputs_give_the_helm_chart_what_it_needs(tf: Config) -> None:
    needed = {
        "data_bucket": "${aws_s3_bucket.data.bucket}",
        "results_bucket": "${aws_s3_bucket.results.bucket}",
        "region": "${var.region}",
        "api_role_arn": "${aws_iam_role.api.arn}",
        "job_role_arn": "${aws_iam_role.job.arn}",
        "cluster_name": "${aws_eks_cluster.this.name}",
        "cluster_endpoint": "${aws_eks_cluster.this.endpoint}",
        "database_endpoint": "${aws_db_instance.jobs.address}",
        "database_secret_arn": "${aws_db_instance.jobs.master_user_secret[0].secret_arn}",
        "data_availability_zone": "${var.data_availability_zone}",
    }
    for name, value in needed.items():
        assert tf.outputs[name]["value"] == value, name
    for name, output in tf.outputs.items():
        assert output.get("description"), f"output {name} needs a description"
    values = tf.outputs["helm_values"]["value"]
    assert values["serviceAccount"] == {
        "name": "${var.api_service_account}",
        "roleArn": "${aws_iam_role.api.arn}",
    }
    assert values["storage"]["jobRoleArn"] == "${aws_iam_role.job.arn}"
    assert values["storage"]["scoping"] == "sts"
    assert values["storage"]["workspaceUrl"] == (
        "s3://${aws_s3_bucket.results.bucket}/${local.results_prefix}"
    )
    assert values["kubernetes"]["dataZone"] == "${var.data_availability_zone}"
    assert values["gateway"] == {
        "serviceAccount": "${var.gateway_service_account}",
        "roleArn": "${aws_iam_role.job.arn}",
        "port": 8080,
    }


def test_helm_values_are_keys_the_chart_declares(tf: Config) -> None:
    schema_path = ROOT / "helm" / "insitu" / "values.schema.json"
    if not schema_path.is_file():
        pytest.skip("helm/insitu/values.schema.json is not there to compare with")
    schema = json.loads(schema_path.read_text())
    for key in sorted(helm_keys(tf)):
        section, name = key.split(".")
        properties = schema["properties"].get(section, {}).get("properties", {})
        assert name in properties, f"helm/insitu does not declare {key}"


def test_readme_maps_every_helm_value(tf: Config) -> None:
    readme = (TERRAFORM / "README.md").read_text()
    for key in helm_keys(tf):
        assert f"`{key}`" in readme, f"README.md does not map Helm value {key}"
    for text in ("database.existingSecret", "terraform apply", "terraform.tfvars.example"):
        assert text in readme


# -- checkov -----------------------------------------------------------------------------------


def test_every_suppression_names_its_check_and_a_reason() -> None:
    skips = []
    for path in TERRAFORM.glob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = SKIP_COMMENT.search(line)
                assert match, f"{path.name}: malformed suppression {line.strip()}"
                skips.append(match.groups())
    for check, reason in skips:
        assert len(reason.split()) >= 8, f"{check}: give a reason a reviewer can weigh"
    assert skips, "expected the documented suppressions"


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """One checkov scan of terraform/ per session (it takes a while)."""
    if not (Path(CHECKOV).is_file() or shutil.which(CHECKOV)):
        missing(
            "checkov",
            f"{CHECKOV} not found: python3 -m venv .venv/tools/checkov && "
            ".venv/tools/checkov/bin/pip install checkov (or set INSITU_CHECKOV)",
        )
    # --skip-download: no calls home for guidelines; the scan itself is local.
    command = [CHECKOV, "-d", str(TERRAFORM), "--framework", "terraform", "--compact"]
    command += ["--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (terraform,) = (r for r in reports if r.get("check_type") == "terraform")
    return dict(terraform)


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 200, summary
    assert summary["resource_count"] > 50, summary


def test_checkov_skips_are_only_the_reasoned_ones(checkov_report: dict[str, Any]) -> None:
    for check in checkov_report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 8, f"{check['check_id']} {check['resource']}: {reason!r}"


# -- terraform itself (when available) ---------------------------------------------------------


def test_terraform_validate_and_its_mocked_plan_tests(tmp_path: Path) -> None:
    binary = shutil.which(os.environ.get("INSITU_TERRAFORM", "terraform"))
    if binary is None:
        missing("terraform", "no terraform binary on PATH (or INSITU_TERRAFORM)")
    work = tmp_path / "terraform"
    ignore = shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*", "*.tfvars")
    shutil.copytree(TERRAFORM, work, ignore=ignore)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

    def terraform(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(binary), *args, "-no-color"]
        return subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=240
        )

    init = ["init", "-backend=false", "-input=false"]
    if Path(PLUGIN_DIR).is_dir():
        init.append(f"-plugin-dir={PLUGIN_DIR}")
    installed = terraform(*init)
    if installed.returncode != 0:
        missing("terraform", "terraform init found no aws provider: " + installed.stderr[-400:])
    validated = terraform("validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    tested = terraform("test")
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-4000:]
    assert re.search(r"Success! \d+ passed, 0 failed", tested.stdout), tested.stdout[-2000:]

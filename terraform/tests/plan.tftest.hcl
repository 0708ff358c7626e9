# `terraform test` with a mocked AWS provider: plans and "applies" offline, so the counts,
# placements and preconditions are checked by Terraform itself. Run: terraform init && terraform test
# (tests/test_terraform.py runs it when a terraform binary and the aws provider are available).

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws", dns_suffix = "amazonaws.com" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
  # The provider checks ARNs and ids by shape; mocks must look real.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-central-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::mock-bucket" }
  }
  mock_resource "aws_iam_openid_connect_provider" {
    defaults = { arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-central-1.amazonaws.com/id/MOCK" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0" }
  }
  mock_resource "aws_eks_cluster" {
    defaults = {
      identity              = [{ oidc = [{ issuer = "https://oidc.eks.eu-central-1.amazonaws.com/id/MOCK" }] }]
      vpc_config            = { cluster_security_group_id = "sg-0123456789abcdef0" }
      certificate_authority = [{ data = "bW9jaw==" }]
    }
  }
  mock_resource "aws_db_instance" {
    defaults = {
      master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:mock" }]
    }
  }
}

variables {
  region                 = "eu-central-1"
  availability_zones     = ["eu-central-1a", "eu-central-1b", "eu-central-1c"]
  data_availability_zone = "eu-central-1b"
}

run "defaults" {
  command = apply

  assert {
    condition     = length(aws_subnet.private) == 3 && length(aws_nat_gateway.this) == 3
    error_message = "One private subnet and one NAT gateway per zone by default."
  }

  assert {
    condition = alltrue([
      for ng in [aws_eks_node_group.system, aws_eks_node_group.cpu_workers] :
      ng.subnet_ids == toset([aws_subnet.private[1].id])
    ])
    error_message = "Node groups must sit in the data zone's private subnet only."
  }

  assert {
    condition     = aws_subnet.private[1].availability_zone == "eu-central-1b"
    error_message = "The data subnet must be in data_availability_zone."
  }

  assert {
    condition     = length(aws_eks_node_group.gpu_workers) == 0
    error_message = "No GPU node group unless asked for."
  }

  assert {
    condition     = aws_eks_node_group.cpu_workers.capacity_type == "SPOT"
    error_message = "CPU workers run on spot capacity."
  }

  assert {
    condition     = aws_vpc_endpoint.s3.route_table_ids == toset(aws_route_table.private[*].id)
    error_message = "The S3 gateway endpoint must serve every private route table."
  }

  assert {
    condition = alltrue([
      for i in range(3) : aws_route.private_nat[i].nat_gateway_id == aws_nat_gateway.this[i].id
    ])
    error_message = "Each zone's private route table uses its own NAT gateway."
  }

  assert {
    condition     = !aws_eks_cluster.this.vpc_config[0].endpoint_public_access
    error_message = "The cluster endpoint is private by default."
  }

  assert {
    condition     = !aws_db_instance.jobs.publicly_accessible && aws_db_instance.jobs.storage_encrypted
    error_message = "The database is private and encrypted."
  }

  assert {
    condition     = output.helm_values.storage.workspaceUrl == "s3://${aws_s3_bucket.results.bucket}/jobs"
    error_message = "helm_values must point the workspaces at the results bucket's jobs prefix."
  }
}

run "single_nat_gateway_and_gpu_workers" {
  command = apply

  variables {
    nat_gateway_per_az    = false
    gpu_worker_node_group = { max_size = 2 }
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 1 && alltrue([for r in aws_route.private_nat : r.nat_gateway_id == aws_nat_gateway.this[0].id])
    error_message = "nat_gateway_per_az = false makes one NAT gateway that every zone uses."
  }

  assert {
    condition     = length(aws_eks_node_group.gpu_workers) == 1 && aws_eks_node_group.gpu_workers[0].subnet_ids == toset([aws_subnet.private[1].id])
    error_message = "A GPU node group, in the data zone, once max_size > 0."
  }
}

run "data_zone_outside_the_vpc" {
  command = plan

  variables {
    data_availability_zone = "eu-central-1d"
  }

  expect_failures = [aws_vpc.this]
}

run "public_endpoint_needs_cidrs" {
  command = plan

  variables {
    cluster_endpoint_public_access = true
  }

  expect_failures = [aws_eks_cluster.this]
}

run "endpoint_open_to_everyone_is_refused" {
  command = plan

  variables {
    cluster_endpoint_public_access       = true
    cluster_endpoint_public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.cluster_endpoint_public_access_cidrs]
}

run "iam_user_must_not_be_the_master_user" {
  command = plan

  variables {
    database_iam_username = "insitu"
  }

  expect_failures = [aws_db_instance.jobs]
}

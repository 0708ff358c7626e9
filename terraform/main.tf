# Names and lookups shared by the other files. Each file below owns one part of the deployment:
# network.tf (VPC, NAT, S3 endpoint, flow logs), kms.tf (keys), storage.tf (buckets),
# eks.tf (cluster and node groups), iam.tf (IRSA roles), database.tf (job database).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix

  # Bucket names are global: default to ones that carry the account and region.
  data_bucket_name    = coalesce(var.data_bucket_name, "${var.name}-data-${local.account_id}-${var.region}")
  results_bucket_name = coalesce(var.results_bucket_name, "${var.name}-results-${local.account_id}-${var.region}")
  log_bucket_name     = coalesce(var.log_bucket_name, "${var.name}-logs-${local.account_id}-${var.region}")

  # The prefixes jobs may touch; the dispatcher's session policies narrow them further per job.
  data_prefix    = trim(var.data_prefix, "/")
  results_prefix = trim(var.results_prefix, "/")

  cluster_name = var.name

  # Workers run in one AZ, next to the data, so chunk reads never cross zones.
  # (the VPC's precondition reports a data AZ outside availability_zones in words)
  data_az_index  = try(index(var.availability_zones, var.data_availability_zone), 0)
  data_subnet_id = aws_subnet.private[local.data_az_index].id

  oidc_issuer = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

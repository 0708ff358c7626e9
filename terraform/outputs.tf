# What the Helm chart (and the operator) needs. `helm_values` groups them under the chart's keys.

output "region" {
  description = "AWS region of the buckets, the cluster and the database."
  value       = var.region
}

output "data_availability_zone" {
  description = "The zone the worker nodes run in, next to the data."
  value       = var.data_availability_zone
}

output "data_bucket" {
  description = "Bucket holding the datasets (catalog URLs are s3://<bucket>/<data_prefix>...)."
  value       = aws_s3_bucket.data.bucket
}

output "data_prefix" {
  description = "Prefix of the data bucket jobs may read."
  value       = "${local.data_prefix}/"
}

output "results_bucket" {
  description = "Bucket holding job workspaces and results."
  value       = aws_s3_bucket.results.bucket
}

output "workspace_url" {
  description = "URL prefix of the job workspaces (the jobs' writable prefix of the results bucket)."
  value       = "s3://${aws_s3_bucket.results.bucket}/${local.results_prefix}"
}

output "log_bucket" {
  description = "Bucket receiving S3 access logs and VPC flow logs."
  value       = aws_s3_bucket.logs.bucket
}

output "s3_kms_key_arn" {
  description = "KMS key encrypting the data and results buckets."
  value       = aws_kms_key.this["s3"].arn
}

output "api_role_arn" {
  description = "IAM role of the insitu API's service account (annotation eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.api.arn
}

output "api_service_account" {
  description = "Namespace and name of the service account the API role trusts."
  value       = { namespace = var.api_namespace, name = var.api_service_account }
}

output "job_role_arn" {
  description = "The job-reader role: the jobs' store gateways sign with it (IRSA); the API assumes it with a per-job session policy for docker and local jobs. No job pod holds it."
  value       = aws_iam_role.job.arn
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint of the cluster (private unless cluster_endpoint_public_access)."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority" {
  description = "Base64 CA certificate of the cluster's API endpoint."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster, for further IRSA roles."
  value       = aws_iam_openid_connect_provider.eks.arn
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "database_endpoint" {
  description = "Host name of the job database."
  value       = aws_db_instance.jobs.address
}

output "database_port" {
  description = "Port of the job database."
  value       = aws_db_instance.jobs.port
}

output "database_name" {
  description = "Name of the job database."
  value       = aws_db_instance.jobs.db_name
}

output "database_username" {
  description = "Master user of the job database; its password is in database_secret_arn."
  value       = aws_db_instance.jobs.username
}

output "database_iam_username" {
  description = "Role the API may log in as with IAM authentication (create it once: CREATE ROLE ... LOGIN; GRANT rds_iam TO ...)."
  value       = var.database_iam_username
}

output "database_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) holding the master password, rotated by RDS."
  value       = aws_db_instance.jobs.master_user_secret[0].secret_arn
}

output "job_node_selector" {
  description = "Node labels the Kubernetes backend should select for CPU job pods."
  value       = local.cpu_worker_labels
}

output "job_tolerations" {
  description = "Taints of the worker node groups, which job pods must tolerate."
  value = {
    cpu = [{ key = "insitu.io/spot", operator = "Equal", value = "true", effect = "NoSchedule" }]
    gpu = [{ key = "nvidia.com/gpu", operator = "Equal", value = "true", effect = "NoSchedule" }]
  }
}

output "database_url_template" {
  description = "SQLAlchemy URL of the job database without its password, for the chart's database Secret (replace PASSWORD with the URL-encoded password from database_secret_arn)."
  value       = "postgresql+psycopg://${aws_db_instance.jobs.username}:PASSWORD@${aws_db_instance.jobs.address}:${aws_db_instance.jobs.port}/${aws_db_instance.jobs.db_name}?sslmode=require"
}

output "helm_values" {
  description = "Values for helm/insitu, under the chart's own keys: terraform output -json helm_values > values-aws.json, then helm install -n <api_namespace> -f values-aws.json. The database Secret is made separately (README)."
  value = {
    serviceAccount = {
      # The API role trusts exactly this service account (namespace api_namespace).
      name    = var.api_service_account
      roleArn = aws_iam_role.api.arn
    }
    storage = {
      region       = var.region
      endpointUrl  = ""
      workspaceUrl = "s3://${aws_s3_bucket.results.bucket}/${local.results_prefix}"
      scoping      = "sts"
      jobRoleArn   = aws_iam_role.job.arn
    }
    kubernetes = {
      namespacePrefix   = var.tenant_namespace_prefix
      jobServiceAccount = var.job_service_account
      dataZone          = var.data_availability_zone
    }
    gateway = {
      # The job-reader role trusts exactly this service account (namespace api_namespace).
      serviceAccount = var.gateway_service_account
      roleArn        = aws_iam_role.job.arn
      port           = 8080
    }
    api        = { nodeSelector = { "insitu.io/pool" = "system" } }
    dispatcher = { nodeSelector = { "insitu.io/pool" = "system" } }
  }
}

# ---------------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------------

variable "name" {
  description = "Name of this deployment: prefixes every resource and is the EKS cluster's name."
  type        = string
  default     = "insitu"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the data bucket; everything else is created there too, next to the data."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as eu-central-1."
  }
}

variable "tags" {
  description = "Extra tags put on every resource (cost centre, owner, ...)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "availability_zones" {
  description = "Availability zones of the VPC's subnets (at least two: EKS and RDS need two). One private and one public subnet are made in each."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6
    error_message = "availability_zones must list between 2 and 6 zones."
  }

  validation {
    condition     = length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must not repeat a zone."
  }
}

variable "data_availability_zone" {
  description = "The zone the worker nodes are placed in, so that chunk reads and Dask traffic stay in one zone. Must be one of availability_zones."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", var.data_availability_zone))
    error_message = "data_availability_zone must be a zone name such as eu-central-1a."
  }
}

variable "vpc_cidr" {
  description = "IPv4 range of the VPC, a /16 to /20. The upper part holds the private subnets (pods get their IPs there), a small slice at the end the public ones."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR block between /16 and /20."
  }
}

variable "nat_gateway_per_az" {
  description = "One NAT gateway per availability zone (true, survives a zone outage) or a single shared one (false, cheaper). NAT carries only image pulls and API calls: S3 goes through the gateway endpoint."
  type        = bool
  default     = true
}

variable "s3_endpoint_restrict_to_account" {
  description = "Let the S3 gateway endpoint reach only this account's buckets (plus ECR's layer bucket and s3_endpoint_extra_bucket_arns), so that code inside the VPC cannot copy data to a foreign bucket in the same region."
  type        = bool
  default     = true
}

variable "s3_endpoint_extra_bucket_arns" {
  description = "Other accounts' buckets the cluster may read through the S3 endpoint (e.g. an open-data bucket), as bucket ARNs."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.s3_endpoint_extra_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", arn))])
    error_message = "s3_endpoint_extra_bucket_arns must hold bucket ARNs such as arn:aws:s3:::open-data-bucket."
  }
}

# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

variable "data_bucket_name" {
  description = "Name of the bucket holding the datasets (Zarr stores). Default: <name>-data-<account>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.data_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.data_bucket_name))
    error_message = "data_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "results_bucket_name" {
  description = "Name of the bucket holding job workspaces and results. Default: <name>-results-<account>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.results_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.results_bucket_name))
    error_message = "results_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "log_bucket_name" {
  description = "Name of the bucket receiving S3 access logs and VPC flow logs. Default: <name>-logs-<account>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.log_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.log_bucket_name))
    error_message = "log_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "data_prefix" {
  description = "Prefix of the data bucket under which datasets live; jobs may read nothing else."
  type        = string
  default     = "datasets/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?$", var.data_prefix))
    error_message = "data_prefix must be a non-empty key prefix without a leading slash or wildcards, e.g. datasets/."
  }
}

variable "results_prefix" {
  description = "Prefix of the results bucket holding job workspaces (inputs, logs, results); jobs may write nothing else."
  type        = string
  default     = "jobs/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?$", var.results_prefix))
    error_message = "results_prefix must be a non-empty key prefix without a leading slash or wildcards, e.g. jobs/."
  }
}

variable "results_retention_days" {
  description = "Days after which a job's workspace and results are deleted from the results bucket."
  type        = number
  default     = 30

  validation {
    condition     = var.results_retention_days >= 1 && floor(var.results_retention_days) == var.results_retention_days
    error_message = "results_retention_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object's old version is kept in the results bucket before it is removed."
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && floor(var.noncurrent_version_retention_days) == var.noncurrent_version_retention_days
    error_message = "noncurrent_version_retention_days must be a whole number of days, at least 1."
  }
}

variable "data_noncurrent_version_retention_days" {
  description = "Days old versions of dataset objects are kept; 0 keeps them for ever. Provenance records object versions, so `insitu rerun` of an old job needs them."
  type        = number
  default     = 0

  validation {
    condition     = var.data_noncurrent_version_retention_days >= 0 && floor(var.data_noncurrent_version_retention_days) == var.data_noncurrent_version_retention_days
    error_message = "data_noncurrent_version_retention_days must be a whole number of days (0 = keep)."
  }
}

variable "incomplete_upload_days" {
  description = "Days after which an unfinished multipart upload is aborted and its parts deleted, in every bucket."
  type        = number
  default     = 2

  validation {
    condition     = var.incomplete_upload_days >= 1 && floor(var.incomplete_upload_days) == var.incomplete_upload_days
    error_message = "incomplete_upload_days must be a whole number of days, at least 1."
  }
}

variable "log_retention_days" {
  description = "Days logs are kept: S3 access logs and flow logs in the log bucket, and the CloudWatch log groups (EKS control plane, RDS)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

# ---------------------------------------------------------------------------------------------
# EKS
# ---------------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "Kubernetes version of the EKS control plane (and of the managed node groups' AMIs)."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.33."
  }
}

variable "cluster_endpoint_public_access" {
  description = "Also expose the Kubernetes API endpoint on the internet (to public_access_cidrs only). Default: private only, reached from inside the VPC (VPN, bastion, CI runner in the VPC)."
  type        = bool
  default     = false
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Address ranges allowed to reach a public API endpoint, when cluster_endpoint_public_access is true. Never 0.0.0.0/0."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "cluster_endpoint_public_access_cidrs must be IPv4 CIDR blocks other than 0.0.0.0/0."
  }
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles or users given cluster-admin through EKS access entries (the identity running terraform gets it too)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.cluster_admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", arn))])
    error_message = "cluster_admin_principal_arns must hold IAM role or user ARNs."
  }
}

variable "system_node_group" {
  description = "On-demand nodes for the insitu API, the dispatcher, the Dask operator and cluster add-ons."
  type = object({
    instance_types = optional(list(string), ["m6i.large"])
    min_size       = optional(number, 2)
    max_size       = optional(number, 4)
    desired_size   = optional(number, 2)
    disk_size_gib  = optional(number, 50)
  })
  default = {}

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size."
  }
}

variable "cpu_worker_node_group" {
  description = "Spot nodes for the jobs' Dask schedulers and workers. List several instance types of one size so spot capacity can be found."
  type = object({
    instance_types = optional(list(string), ["m6i.2xlarge", "m6a.2xlarge", "m5.2xlarge", "m7i.2xlarge"])
    min_size       = optional(number, 0)
    max_size       = optional(number, 20)
    desired_size   = optional(number, 1)
    disk_size_gib  = optional(number, 100)
  })
  default = {}

  validation {
    condition     = var.cpu_worker_node_group.min_size >= 0 && var.cpu_worker_node_group.min_size <= var.cpu_worker_node_group.desired_size && var.cpu_worker_node_group.desired_size <= var.cpu_worker_node_group.max_size && var.cpu_worker_node_group.max_size >= 1
    error_message = "cpu_worker_node_group needs 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }

  validation {
    condition     = length(var.cpu_worker_node_group.instance_types) >= 1
    error_message = "cpu_worker_node_group.instance_types must name at least one instance type."
  }
}

variable "gpu_worker_node_group" {
  description = "On-demand GPU nodes for jobs that ask for a GPU. max_size 0 (the default) creates no GPU node group."
  type = object({
    instance_types = optional(list(string), ["g5.xlarge"])
    min_size       = optional(number, 0)
    max_size       = optional(number, 0)
    desired_size   = optional(number, 0)
    disk_size_gib  = optional(number, 200)
  })
  default = {}

  validation {
    condition     = var.gpu_worker_node_group.min_size >= 0 && var.gpu_worker_node_group.min_size <= var.gpu_worker_node_group.desired_size && var.gpu_worker_node_group.desired_size <= var.gpu_worker_node_group.max_size
    error_message = "gpu_worker_node_group needs 0 <= min_size <= desired_size <= max_size."
  }
}

# ---------------------------------------------------------------------------------------------
# Kubernetes identities (must match the Helm chart)
# ---------------------------------------------------------------------------------------------

variable "api_namespace" {
  description = "Namespace the insitu API and dispatcher run in."
  type        = string
  default     = "insitu"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.api_namespace))
    error_message = "api_namespace must be a Kubernetes namespace name."
  }
}

variable "api_service_account" {
  description = "Service account of the insitu API and dispatcher; it gets the API role through IRSA."
  type        = string
  default     = "insitu-api"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.api_service_account))
    error_message = "api_service_account must be a Kubernetes service account name."
  }
}

variable "tenant_namespace_prefix" {
  description = "Prefix of the per-tenant namespaces jobs run in."
  type        = string
  default     = "insitu-tenant-"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,40}$", var.tenant_namespace_prefix))
    error_message = "tenant_namespace_prefix must be the start of a Kubernetes namespace name (lowercase letters, digits, hyphens)."
  }
}

variable "gateway_service_account" {
  description = "Service account of the jobs' store gateway pods in api_namespace; it alone gets the job-reader role through IRSA."
  type        = string
  default     = "insitu-gateway"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.gateway_service_account))
    error_message = "gateway_service_account must be a Kubernetes service account name."
  }
}

variable "job_service_account" {
  description = "Service account of job pods in the tenant namespaces; it has no cloud role (jobs reach the store through their gateway)."
  type        = string
  default     = "insitu-job"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.job_service_account))
    error_message = "job_service_account must be a Kubernetes service account name."
  }
}

# ---------------------------------------------------------------------------------------------
# Job database
# ---------------------------------------------------------------------------------------------

variable "database_engine_version" {
  description = "PostgreSQL version of the job database: a major version (16) follows RDS's default minor, or pin one (16.4)."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^[0-9]{2}(\\.[0-9]+)?$", var.database_engine_version)) && try(tonumber(split(".", var.database_engine_version)[0]) >= 13, false)
    error_message = "database_engine_version must be PostgreSQL 13 or later, e.g. 16 or 16.4."
  }
}

variable "database_instance_class" {
  description = "RDS instance class of the job database (the job table is small; the API's p99 matters more than size)."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.database_instance_class)) && !can(regex("\\.(micro|small)$", var.database_instance_class))
    error_message = "database_instance_class must be an RDS class of size medium or larger (Performance Insights is not available on micro and small)."
  }
}

variable "database_allocated_storage_gib" {
  description = "Initial storage of the job database, in GiB."
  type        = number
  default     = 20

  validation {
    condition     = var.database_allocated_storage_gib >= 20 && var.database_allocated_storage_gib <= 65536
    error_message = "database_allocated_storage_gib must be between 20 and 65536."
  }
}

variable "database_max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling of the job database, in GiB (at least database_allocated_storage_gib)."
  type        = number
  default     = 100

  validation {
    condition     = var.database_max_allocated_storage_gib >= 20 && var.database_max_allocated_storage_gib <= 65536
    error_message = "database_max_allocated_storage_gib must be between 20 and 65536."
  }
}

variable "database_multi_az" {
  description = "Keep a synchronous standby of the job database in a second zone (fails over in about a minute)."
  type        = bool
  default     = true
}

variable "database_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery) of the job database. The job history is the platform's audit log."
  type        = number
  default     = 14

  validation {
    condition     = var.database_backup_retention_days >= 7 && var.database_backup_retention_days <= 35
    error_message = "database_backup_retention_days must be between 7 and 35."
  }
}

variable "database_monitoring_interval" {
  description = "Seconds between enhanced-monitoring samples of the job database's host."
  type        = number
  default     = 60

  validation {
    condition     = contains([1, 5, 10, 15, 30, 60], var.database_monitoring_interval)
    error_message = "database_monitoring_interval must be 1, 5, 10, 15, 30 or 60."
  }
}

variable "database_name" {
  description = "Name of the PostgreSQL database insitu uses."
  type        = string
  default     = "insitu"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_name))
    error_message = "database_name must be a lowercase PostgreSQL identifier."
  }
}

variable "database_master_username" {
  description = "Master user of the job database; RDS keeps its password in Secrets Manager."
  type        = string
  default     = "insitu"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_master_username)) && !contains(["admin", "postgres", "rdsadmin"], var.database_master_username)
    error_message = "database_master_username must be a lowercase PostgreSQL identifier other than admin, postgres or rdsadmin."
  }
}

variable "database_iam_username" {
  description = "Database role the API may log in as with IAM authentication instead of the password (create it once with GRANT rds_iam). Must differ from the master user."
  type        = string
  default     = "insitu_api"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_iam_username))
    error_message = "database_iam_username must be a lowercase PostgreSQL identifier."
  }
}

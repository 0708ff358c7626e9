# IAM roles for service accounts (IRSA): the insitu API's role, and the job-reader role that
# signs jobs' store requests, either in the jobs' store gateways (their service account in the
# API's namespace; botocore refreshes the web identity, so a job may run past an hour) or
# through the API (AssumeRole with a per-job session policy, for the docker and local
# backends). Job pods have no role at all: their service account has no annotation.

resource "aws_iam_openid_connect_provider" "eks" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
  # No thumbprint: IAM validates the EKS issuer against its own trusted CAs.
}

locals {
  api_subject     = "system:serviceaccount:${var.api_namespace}:${var.api_service_account}"
  gateway_subject = "system:serviceaccount:${var.api_namespace}:${var.gateway_service_account}"
  data_prefix_arn = "${aws_s3_bucket.data.arn}/${local.data_prefix}/*"
  jobs_prefix_arn = "${aws_s3_bucket.results.arn}/${local.results_prefix}/*"
}

# ---------------------------------------------------------------------------------------------
# The insitu API (and dispatcher)
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "api_assume" {
  statement {
    sid     = "ApiServiceAccount"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [local.api_subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "api" {
  name                 = "${var.name}-api"
  description          = "insitu API and dispatcher (IRSA ${local.api_subject})"
  assume_role_policy   = data.aws_iam_policy_document.api_assume.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "api" {
  # The catalog: list datasets and read their metadata (and, for registration, their chunks).
  statement {
    sid       = "ListDataBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.data.arn]
  }

  statement {
    sid       = "ReadData"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }

  # Job workspaces: code bundles in, results out, presigned downloads, clean-up.
  statement {
    sid       = "ListResultsBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.results.arn]
  }

  statement {
    sid = "ReadWriteResults"
    actions = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.results.arn}/*"]
  }

  statement {
    sid       = "UseBucketKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this["s3"].arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }

  # Per-job credentials: AssumeRole on the job-reader role with a session policy.
  statement {
    sid       = "IssueJobCredentials"
    actions   = ["sts:AssumeRole", "sts:TagSession"]
    resources = [aws_iam_role.job.arn]
  }

  # The database password, for a secrets driver that mounts it with the API's identity.
  statement {
    sid       = "ReadDatabasePassword"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_db_instance.jobs.master_user_secret[0].secret_arn]
  }

  statement {
    sid       = "DecryptDatabasePassword"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this["rds"].arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.${local.dns_suffix}"]
    }
  }

  # Or, instead of the password: IAM database authentication as the iam_username role.
  statement {
    sid       = "ConnectWithIamAuth"
    actions   = ["rds-db:connect"]
    resources = ["arn:${local.partition}:rds-db:${var.region}:${local.account_id}:dbuser:${aws_db_instance.jobs.resource_id}/${var.database_iam_username}"]
  }
}

resource "aws_iam_role_policy" "api" {
  name   = "insitu-api"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

# ---------------------------------------------------------------------------------------------
# The job-reader role: datasets/* read-only, jobs/* read-write, nothing else
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "job_assume" {
  # The API narrows each session further with a session policy (insitu.credentials).
  statement {
    sid     = "ApiIssuesScopedSessions"
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.api.arn]
    }
  }

  statement {
    sid     = "StoreGatewayServiceAccount"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [local.gateway_subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "job" {
  name               = "${var.name}-job-reader"
  description        = "insitu jobs: read ${local.data_prefix}/ of the data bucket, write ${local.results_prefix}/ of the results bucket"
  assume_role_policy = data.aws_iam_policy_document.job_assume.json
  # Sessions issued by the API are chained role sessions, which AWS caps at one hour.
  max_session_duration = 3600
}

data "aws_iam_policy_document" "job" {
  statement {
    sid       = "ListDatasets"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.data_prefix}/", "${local.data_prefix}/*"]
    }
  }

  statement {
    sid       = "ReadDatasets"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = [local.data_prefix_arn]
  }

  statement {
    sid       = "ListJobWorkspaces"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.results.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.results_prefix}/", "${local.results_prefix}/*"]
    }
  }

  # A job reads its inputs (spec, code bundle) from its workspace and writes its results there.
  statement {
    sid = "UseJobWorkspaces"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.jobs_prefix_arn]
  }

  statement {
    sid       = "UseBucketKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this["s3"].arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "job" {
  name   = "insitu-job-reader"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.job.json
}

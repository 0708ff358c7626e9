# Customer-managed keys, one per purpose so that a grant on one never opens another:
# s3 (data and results buckets), eks (Kubernetes secrets), logs (CloudWatch log groups),
# rds (database storage, its Performance Insights, the master password secret).
# Every key rotates yearly; access is through IAM policies (the account statement below).

locals {
  kms_keys = {
    s3   = "S3 objects of the insitu data and results buckets"
    eks  = "Kubernetes secrets of the insitu EKS cluster"
    logs = "CloudWatch log groups of the insitu deployment"
    rds  = "The insitu job database, its Performance Insights and its master password secret"
  }
}

# The account statement delegates the key to IAM: only principals whose IAM policies name the
# key (the roles in iam.tf, the services acting for them) can use it.
data "aws_iam_policy_document" "kms_account" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" means this key only; the statement delegates to this account's IAM policies, which is AWS's default key policy.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" means this key only; write access is granted through IAM policies scoped to the key's ARN.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" means this key only (key policies cannot name other resources).
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

# CloudWatch Logs encrypts with the key itself, so it must be named in the key policy, limited
# to this account's log groups.
data "aws_iam_policy_document" "kms_logs" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" means this key only; the statement delegates to this account's IAM policies, which is AWS's default key policy.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" means this key only; the logs service may use it only for this account's log groups (encryption-context condition).
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" means this key only (key policies cannot name other resources).
  source_policy_documents = [data.aws_iam_policy_document.kms_account.json]

  statement {
    sid       = "CloudWatchLogsOfThisAccount"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.${local.dns_suffix}"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  for_each = local.kms_keys

  description             = each.value
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = each.key == "logs" ? data.aws_iam_policy_document.kms_logs.json : data.aws_iam_policy_document.kms_account.json

  tags = { Name = "${var.name}-${each.key}" }
}

resource "aws_kms_alias" "this" {
  for_each = local.kms_keys

  name          = "alias/${var.name}-${each.key}"
  target_key_id = aws_kms_key.this[each.key].key_id
}

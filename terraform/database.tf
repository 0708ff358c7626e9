# The job database: PostgreSQL on RDS, private, encrypted, reachable only from the EKS nodes.
# RDS creates the master password in Secrets Manager and rotates it; nobody types it.

locals {
  db_identifier   = "${var.name}-jobs"
  db_major        = split(".", var.database_engine_version)[0]
  db_log_exports  = ["postgresql", "upgrade"]
  db_cluster_sgid = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

resource "aws_db_subnet_group" "jobs" {
  name        = local.db_identifier
  description = "Private subnets of the insitu job database"
  subnet_ids  = aws_subnet.private[*].id
}

resource "aws_security_group" "database" {
  name        = "${local.db_identifier}-db"
  description = "insitu job database: PostgreSQL from the EKS nodes only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${local.db_identifier}-db" }
}

# Managed node groups (without security groups of their own) carry the cluster security group.
resource "aws_vpc_security_group_ingress_rule" "database_from_nodes" {
  security_group_id            = aws_security_group.database.id
  description                  = "PostgreSQL from the EKS nodes (cluster security group)"
  referenced_security_group_id = local.db_cluster_sgid
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_parameter_group" "jobs" {
  name_prefix = "${local.db_identifier}-"
  family      = "postgres${local.db_major}"
  description = "insitu job database: TLS only, slow-query and DDL logging"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "500" # ms: the API's p99 budget is 50 ms, so anything this slow is worth a look
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created before the instance so that its log exports are encrypted and expire.
resource "aws_cloudwatch_log_group" "database" {
  for_each          = toset(local.db_log_exports)
  name              = "/aws/rds/instance/${local.db_identifier}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this["logs"].arn
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${local.db_identifier}-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "jobs" {
  identifier     = local.db_identifier
  engine         = "postgres"
  engine_version = var.database_engine_version
  instance_class = var.database_instance_class
  db_name        = var.database_name
  port           = 5432

  username                      = var.database_master_username
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.this["rds"].arn

  iam_database_authentication_enabled = true

  allocated_storage     = var.database_allocated_storage_gib
  max_allocated_storage = var.database_max_allocated_storage_gib
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this["rds"].arn

  db_subnet_group_name   = aws_db_subnet_group.jobs.name
  vpc_security_group_ids = [aws_security_group.database.id]
  publicly_accessible    = false
  multi_az               = var.database_multi_az
  parameter_group_name   = aws_db_parameter_group.jobs.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.database_backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.db_identifier}-final"

  auto_minor_version_upgrade      = true
  allow_major_version_upgrade     = false
  enabled_cloudwatch_logs_exports = local.db_log_exports

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.this["rds"].arn
  performance_insights_retention_period = 7 # days; the free tier

  monitoring_interval = var.database_monitoring_interval
  monitoring_role_arn = aws_iam_role.rds_monitoring.arn

  lifecycle {
    precondition {
      condition     = var.database_max_allocated_storage_gib >= var.database_allocated_storage_gib
      error_message = "database_max_allocated_storage_gib must be at least database_allocated_storage_gib."
    }
    precondition {
      condition     = var.database_iam_username != var.database_master_username
      error_message = "database_iam_username must differ from database_master_username: a role granted rds_iam can no longer log in with its password."
    }
  }

  depends_on = [aws_cloudwatch_log_group.database, aws_iam_role_policy_attachment.rds_monitoring]
}

terraform {
  # Preconditions (1.2) and optional object attributes (1.3) are used; 1.5 is the oldest tested.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.81 made the OIDC provider's thumbprint_list optional; 6.x renames arguments used here.
      version = "~> 5.81"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "insitu.io/deployment" = var.name, "managed-by" = "terraform" }, var.tags)
  }
}

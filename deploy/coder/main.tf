# A Coder template that does what Coder's `kubernetes-envbox` template does,
# with cvmd as the outer container: one privileged pod per workspace, the
# workspace image booted under sysbox-runc, the agent started inside it by
# its init script (CVMD_BOOTSTRAP_SCRIPT), the writable layer on a PVC so
# the user's changes survive a stop. The pod follows
# deploy/kubernetes/workspace-pod.yaml (read it for why each part is there);
# tests/coder_template.rs parses this file and checks its env names against
# cvmd's settings.
#
#   coder templates push cvmd --directory deploy/coder

terraform {
  required_providers {
    coder = {
      source = "coder/coder"
    }
    kubernetes = {
      source = "hashicorp/kubernetes"
    }
  }
}

variable "use_kubeconfig" {
  type        = bool
  default     = false
  description = "Use ~/.kube/config (true) or the Coder server's in-cluster service account (false)."
}

variable "namespace" {
  type        = string
  default     = "coder-workspaces"
  description = "Namespace the workspace pods and PVCs are created in."
}

variable "cvmd_image" {
  type        = string
  default     = "registry.example.com/cvmd:0.1.0"
  description = "The outer image: cvmd, cvmctl and Sysbox (images/outer/Dockerfile)."
}

variable "pull_secret" {
  type        = string
  default     = ""
  description = "Name of a kubernetes.io/dockerconfigjson Secret for the workspace image's registry (empty: none)."
}

provider "coder" {}

provider "kubernetes" {
  config_path = var.use_kubeconfig ? "~/.kube/config" : null
}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

data "coder_parameter" "image" {
  name         = "image"
  display_name = "Workspace image"
  description  = "An image that boots systemd (and can run Docker) as a VM would."
  default      = "registry.example.com/workspaces/debian-systemd:bookworm"
  mutable      = true
}

data "coder_parameter" "cpu" {
  name         = "cpu"
  display_name = "CPUs"
  type         = "number"
  default      = 2
  mutable      = true
  validation {
    min = 1
    max = 16
  }
}

data "coder_parameter" "memory" {
  name         = "memory"
  display_name = "Memory (GiB)"
  type         = "number"
  default      = 4
  mutable      = true
  validation {
    min = 1
    max = 64
  }
}

data "coder_parameter" "gpus" {
  name         = "gpus"
  display_name = "NVIDIA GPUs"
  description  = "0 for none; more need nodes with the NVIDIA device plugin."
  type         = "number"
  default      = 0
  mutable      = true
  validation {
    min = 0
    max = 8
  }
}

data "coder_parameter" "disk" {
  name         = "disk"
  display_name = "Disk (GiB)"
  description  = "The workspace's writable layer: what the user installs and creates."
  type         = "number"
  default      = 20
  mutable      = false
  validation {
    min = 5
    max = 500
  }
}

resource "coder_agent" "main" {
  os   = "linux"
  arch = "amd64"
}

locals {
  name = "coder-${lower(data.coder_workspace_owner.me.name)}-${lower(data.coder_workspace.me.name)}"
  # envbox gives the agent its token through the environment; cvmd never
  # passes CODER_* variables into the workspace (they hold credentials), so
  # the token travels inside the script, which cvmd feeds to /bin/sh on
  # stdin and never logs (src/launch/bootstrap.rs).
  bootstrap = "export CODER_AGENT_TOKEN='${coder_agent.main.token}'\n${coder_agent.main.init_script}"
  gpu_limit = data.coder_parameter.gpus.value > 0 ? { "nvidia.com/gpu" = data.coder_parameter.gpus.value } : {}
}

resource "kubernetes_persistent_volume_claim" "state" {
  metadata {
    name      = "${local.name}-state"
    namespace = var.namespace
    labels = {
      "app.kubernetes.io/name"     = "cvmd-workspace"
      "app.kubernetes.io/instance" = local.name
    }
  }
  wait_until_bound = false
  spec {
    access_modes = ["ReadWriteOnce"]
    resources {
      requests = {
        storage = "${data.coder_parameter.disk.value}Gi"
      }
    }
  }
}

resource "kubernetes_pod" "main" {
  count = data.coder_workspace.me.start_count

  metadata {
    name      = local.name
    namespace = var.namespace
    labels = {
      "app.kubernetes.io/name"     = "cvmd-workspace"
      "app.kubernetes.io/instance" = local.name
    }
  }

  spec {
    # Above CVMD_STOP_TIMEOUT (25 s): cvmd stops the workspace, then
    # deletes its container and unmounts before the kubelet's SIGKILL.
    termination_grace_period_seconds = 30
    restart_policy                   = "OnFailure"
    automount_service_account_token  = false
    node_selector = {
      "cvmd.dev/workspaces" = "true"
    }
    toleration {
      key      = "cvmd.dev/workspaces"
      operator = "Equal"
      value    = "true"
      effect   = "NoSchedule"
    }

    container {
      name  = "cvmd"
      image = var.cvmd_image
      security_context {
        privileged = true
      }
      termination_message_policy = "FallbackToLogsOnError"

      env {
        name  = "CVMD_IMAGE"
        value = data.coder_parameter.image.value
      }
      env {
        name  = "CVMD_WORKSPACE"
        value = local.name
      }
      env {
        name  = "CVMD_HOSTNAME"
        value = lower(data.coder_workspace.me.name)
      }
      env {
        name  = "CVMD_BOOTSTRAP_SCRIPT"
        value = local.bootstrap
      }
      env {
        name  = "CVMD_CPUS"
        value = tostring(data.coder_parameter.cpu.value)
      }
      env {
        name  = "CVMD_MEMORY"
        value = "${data.coder_parameter.memory.value}GiB"
      }
      env {
        name  = "CVMD_ADD_GPU"
        value = data.coder_parameter.gpus.value > 0 ? "true" : "false"
      }
      env {
        name  = "CVMD_ADD_FUSE"
        value = "true"
      }
      env {
        name  = "CVMD_STOP_TIMEOUT"
        value = "25"
      }
      env {
        name  = "CVMD_LOG_FORMAT"
        value = "json"
      }
      dynamic "env" {
        for_each = var.pull_secret == "" ? [] : [1]
        content {
          name  = "CVMD_PULL_SECRET"
          value = "/var/run/secrets/cvmd/pull/.dockerconfigjson"
        }
      }

      resources {
        # Sysbox's emptyDir (50Gi) plus logs and the outer layer; the
        # writable layer is on the PVC, not counted here.
        requests = {
          cpu                 = data.coder_parameter.cpu.value
          memory              = "${data.coder_parameter.memory.value}Gi"
          "ephemeral-storage" = "10Gi"
        }
        limits = merge({
          cpu                 = data.coder_parameter.cpu.value
          memory              = "${data.coder_parameter.memory.value}Gi"
          "ephemeral-storage" = "60Gi"
        }, local.gpu_limit)
      }

      # As in deploy/kubernetes/workspace-pod.yaml, where the numbers are
      # explained: ready while the workspace runs, alive while cvmd answers.
      readiness_probe {
        exec {
          command = ["cvmctl", "status", "--ready"]
        }
        period_seconds    = 10
        timeout_seconds   = 10
        failure_threshold = 3
      }
      liveness_probe {
        exec {
          command = ["cvmctl", "status"]
        }
        initial_delay_seconds = 10
        period_seconds        = 30
        timeout_seconds       = 20
        failure_threshold     = 5
      }

      volume_mount {
        name       = "cache"
        mount_path = "/var/lib/cvmd"
      }
      volume_mount {
        name       = "sysbox"
        mount_path = "/var/lib/sysbox"
      }
      volume_mount {
        name       = "state"
        mount_path = "/run/cvmd"
      }
      volume_mount {
        name       = "lib-modules"
        mount_path = "/lib/modules"
        read_only  = true
      }
      volume_mount {
        name       = "usr-src"
        mount_path = "/usr/src"
        read_only  = true
      }
      dynamic "volume_mount" {
        for_each = var.pull_secret == "" ? [] : [1]
        content {
          name       = "pull-secret"
          mount_path = "/var/run/secrets/cvmd/pull"
          read_only  = true
        }
      }
    }

    volume {
      name = "cache"
      host_path {
        path = "/var/lib/cvmd"
        type = "DirectoryOrCreate"
      }
    }
    volume {
      name = "sysbox"
      empty_dir {
        size_limit = "50Gi"
      }
    }
    volume {
      name = "state"
      persistent_volume_claim {
        claim_name = kubernetes_persistent_volume_claim.state.metadata[0].name
      }
    }
    volume {
      name = "lib-modules"
      host_path {
        path = "/lib/modules"
        type = "Directory"
      }
    }
    volume {
      name = "usr-src"
      host_path {
        path = "/usr/src"
        type = "Directory"
      }
    }
    dynamic "volume" {
      for_each = var.pull_secret == "" ? [] : [var.pull_secret]
      content {
        name = "pull-secret"
        secret {
          secret_name = volume.value
        }
      }
    }
  }
}

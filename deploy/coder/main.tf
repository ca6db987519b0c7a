# A Coder template that runs each workspace as a cvmd pod: what Coder's
# kubernetes-envbox template does, with cvmd in place of envbox. The pod
# follows deploy/kubernetes/workspace-pod-pvc.yaml (read its comments for
# the why of each volume and number); README.md beside this file says how
# to push it.

terraform {
  required_providers {
    coder = {
      source  = "coder/coder"
      version = "~> 2.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.23"
    }
  }
}

variable "use_kubeconfig" {
  type        = bool
  default     = false
  description = <<-EOF
  Use the Coder host's ~/.kube/config (true), or the in-cluster service
  account when Coder itself runs as a pod in the workspaces' cluster
  (false).
  EOF
}

variable "namespace" {
  type        = string
  description = "Namespace the workspace pods and claims go in (must exist)."
}

variable "cvmd_image" {
  type        = string
  default     = "registry.example.com/cvmd:0.1.0"
  description = "The outer image (images/outer/Dockerfile), pinned to a release."
}

variable "pull_secret" {
  type        = string
  default     = "workspace-pull-secret"
  description = <<-EOF
  Name of a kubernetes.io/dockerconfigjson Secret in the namespace with
  credentials for the workspace images' registries; none is needed for
  public images (the reference is optional).
  EOF
}

variable "workspace_command" {
  type        = string
  default     = "sleep infinity"
  description = <<-EOF
  What the workspace runs as its main process (CVMD_COMMAND). The default
  keeps an image without an init (codercom/enterprise-base) running for
  the agent; empty for an image that boots systemd (cvmd then runs its
  /sbin/init).
  EOF
}

variable "workspace_user" {
  type        = string
  default     = "coder"
  description = "User the command, and so the Coder agent, runs as (CVMD_USER); empty for the image's own."
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "CPU architecture of the workspace nodes (the agent binary's)."
}

provider "kubernetes" {
  config_path = var.use_kubeconfig ? "~/.kube/config" : null
}

provider "coder" {}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

data "coder_parameter" "image" {
  name         = "image"
  display_name = "Workspace image"
  description  = "The image the workspace boots (a registry reference)."
  type         = "string"
  default      = "codercom/enterprise-base:ubuntu"
  mutable      = true
}

data "coder_parameter" "cpu" {
  name         = "cpu"
  display_name = "CPUs"
  description  = "CPU cores the workspace may use (the pod's limit)."
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
  description  = "Memory the workspace may use (the pod's limit)."
  type         = "number"
  default      = 4
  mutable      = true
  validation {
    min = 1
    max = 64
  }
}

data "coder_parameter" "gpu" {
  name         = "gpu"
  display_name = "NVIDIA GPUs"
  description  = "GPUs passed into the workspace (nodes need the NVIDIA device plugin)."
  type         = "number"
  default      = 0
  mutable      = true
  validation {
    min = 0
    max = 4
  }
}

data "coder_parameter" "disk" {
  name         = "disk"
  display_name = "Disk (GiB)"
  description  = "The persistent volume: everything the user changes in the image, and the home directory."
  type         = "number"
  default      = 30
  mutable      = true
  validation {
    min = 10
    max = 500
  }
}

locals {
  name = "coder-${lower(data.coder_workspace_owner.me.name)}-${lower(data.coder_workspace.me.name)}"
  labels = {
    "app.kubernetes.io/name"     = "cvmd-workspace"
    "app.kubernetes.io/instance" = local.name
    "app.kubernetes.io/part-of"  = "coder"
  }
  # The GPU resource only when GPUs are asked for: a zero request would
  # still keep the pod off nodes without the device plugin's resource.
  gpu_limit = data.coder_parameter.gpu.value > 0 ? { "nvidia.com/gpu" = tostring(data.coder_parameter.gpu.value) } : {}
}

resource "coder_agent" "main" {
  os   = "linux"
  arch = var.arch
  dir  = "/home/coder"
  # The home directory starts empty on a new volume.
  startup_script = <<-EOT
    #!/bin/sh
    for f in .profile .bashrc; do
      [ -f "$HOME/$f" ] || [ ! -f "/etc/skel/$f" ] || cp "/etc/skel/$f" "$HOME/$f"
    done
  EOT
}

# The agent's start: its token and init script, run by cvmd inside the
# workspace once it is up (CVMD_BOOTSTRAP_SCRIPT, fed to /bin/sh on stdin,
# never logged). cvmd passes no CODER_* variable into the workspace, so
# the token travels in the script; a Secret keeps it out of the pod spec.
resource "kubernetes_secret_v1" "bootstrap" {
  count = data.coder_workspace.me.start_count
  metadata {
    name      = "${local.name}-bootstrap"
    namespace = var.namespace
    labels    = local.labels
  }
  data = {
    script = <<-EOT
      export CODER_AGENT_TOKEN='${coder_agent.main.token}'
      ${coder_agent.main.init_script}
    EOT
  }
}

# The writable layer and the home directory, kept while the workspace is
# stopped (the pod is deleted) and dropped with the workspace.
resource "kubernetes_persistent_volume_claim_v1" "state" {
  metadata {
    name      = "${local.name}-state"
    namespace = var.namespace
    labels    = local.labels
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

resource "kubernetes_pod_v1" "main" {
  count = data.coder_workspace.me.start_count
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    # Above CVMD_STOP_TIMEOUT (25 s): cvmd stops the workspace, then the
    # container is deleted and unmounted before the kubelet's SIGKILL.
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
      name                       = "cvmd"
      image                      = var.cvmd_image
      termination_message_policy = "FallbackToLogsOnError"

      security_context {
        privileged = true
      }

      env {
        name  = "CVMD_IMAGE"
        value = data.coder_parameter.image.value
      }
      env {
        name = "CVMD_WORKSPACE"
        value_from {
          field_ref {
            field_path = "metadata.name"
          }
        }
      }
      env {
        name = "CVMD_POD_NAMESPACE"
        value_from {
          field_ref {
            field_path = "metadata.namespace"
          }
        }
      }
      env {
        name  = "CVMD_HOSTNAME"
        value = lower(data.coder_workspace.me.name)
      }
      env {
        name = "CVMD_PULL_SECRET"
        value_from {
          secret_key_ref {
            name     = var.pull_secret
            key      = ".dockerconfigjson"
            optional = true
          }
        }
      }
      env {
        name  = "CVMD_COMMAND"
        value = var.workspace_command
      }
      env {
        name  = "CVMD_USER"
        value = var.workspace_user
      }
      # The whole writable layer on the claim (the state dir is on it):
      # it follows the node's ID range and is rebased on a new image.
      env {
        name  = "CVMD_PERSIST_DIR"
        value = "/run/cvmd/persist"
      }
      env {
        name  = "CVMD_PERSIST"
        value = "disk"
      }
      env {
        name  = "CVMD_MOUNTS"
        value = "/home/coder:/home/coder"
      }
      # Whole cores and bytes (divisor 1), the units cvmd parses.
      env {
        name = "CVMD_CPUS"
        value_from {
          resource_field_ref {
            container_name = "cvmd"
            resource       = "limits.cpu"
            divisor        = "1"
          }
        }
      }
      env {
        name = "CVMD_MEMORY"
        value_from {
          resource_field_ref {
            container_name = "cvmd"
            resource       = "limits.memory"
            divisor        = "1"
          }
        }
      }
      env {
        name  = "CVMD_ADD_GPU"
        value = data.coder_parameter.gpu.value > 0 ? "true" : "false"
      }
      env {
        name = "CVMD_BOOTSTRAP_SCRIPT"
        value_from {
          secret_key_ref {
            name = kubernetes_secret_v1.bootstrap[0].metadata[0].name
            key  = "script"
          }
        }
      }
      env {
        name  = "CVMD_STOP_TIMEOUT"
        value = "25"
      }
      env {
        name  = "CVMD_LOG_FORMAT"
        value = "json"
      }

      resources {
        # Memory requested as limited: a workspace is long-lived and an
        # overcommitted node kills it. Half the CPUs requested: editors
        # and builds are bursty.
        requests = {
          cpu                 = tostring(data.coder_parameter.cpu.value / 2)
          memory              = "${data.coder_parameter.memory.value}Gi"
          "ephemeral-storage" = "5Gi"
        }
        # ephemeral-storage: the sysbox emptyDir (30Gi) and cvmd's own
        # layer and logs (1Gi); the state is on the claim.
        limits = merge({
          cpu                 = tostring(data.coder_parameter.cpu.value)
          memory              = "${data.coder_parameter.memory.value}Gi"
          "ephemeral-storage" = "31Gi"
        }, local.gpu_limit)
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
        sub_path   = "state"
      }
      volume_mount {
        name       = "state"
        mount_path = "/home/coder"
        sub_path   = "home"
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
    }

    # The node-wide layer cache every workspace on the node shares.
    volume {
      name = "cache"
      host_path {
        path = "/var/lib/cvmd"
        type = "DirectoryOrCreate"
      }
    }
    # sysbox-mgr's data root: node disk, not tmpfs.
    volume {
      name = "sysbox"
      empty_dir {
        size_limit = "30Gi"
      }
    }
    volume {
      name = "state"
      persistent_volume_claim {
        claim_name = kubernetes_persistent_volume_claim_v1.state.metadata[0].name
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
  }
}

resource "coder_metadata" "pod" {
  count       = data.coder_workspace.me.start_count
  resource_id = kubernetes_pod_v1.main[0].id
  item {
    key   = "image"
    value = data.coder_parameter.image.value
  }
  item {
    key   = "cpus"
    value = data.coder_parameter.cpu.value
  }
  item {
    key   = "memory"
    value = "${data.coder_parameter.memory.value} GiB"
  }
  item {
    key   = "gpus"
    value = data.coder_parameter.gpu.value
  }
}

#!/usr/bin/env bash
# A GKE node pool for cvmd workspaces (see gke.md for why each flag).
# Usage: CLUSTER=my-cluster ZONE=us-central1-a bash gke-node-pool.sh
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${ZONE:?set ZONE}"
version=$(gcloud container clusters describe "$CLUSTER" --zone "$ZONE" \
  --format='value(currentMasterVersion)')
gcloud container node-pools create cvm-workspaces \
  --cluster "$CLUSTER" --zone "$ZONE" \
  --image-type UBUNTU_CONTAINERD \
  --node-version "$version" \
  --machine-type "${MACHINE_TYPE:-n2-standard-8}" \
  --disk-type pd-ssd --disk-size 200 \
  --num-nodes "${NODES:-2}" \
  --node-labels cvmd.dev/workspaces=true \
  --node-taints cvmd.dev/workspaces=true:NoSchedule

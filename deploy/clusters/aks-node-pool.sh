#!/usr/bin/env bash
# An AKS node pool for cvmd workspaces (see aks.md for why each flag).
# Usage: RESOURCE_GROUP=rg CLUSTER=my-cluster bash aks-node-pool.sh
set -euo pipefail
: "${RESOURCE_GROUP:?set RESOURCE_GROUP}" "${CLUSTER:?set CLUSTER}"
version=$(az aks show -g "$RESOURCE_GROUP" -n "$CLUSTER" --query kubernetesVersion -o tsv)
# Kubernetes 1.18 or newer: older AKS node images are too old for Sysbox.
if [[ $(printf '%s\n1.18\n' "$version" | sort -V | head -n1) != 1.18 ]]; then
  echo "cluster $CLUSTER runs Kubernetes $version; upgrade it to 1.18 or newer first" >&2
  exit 1
fi
az aks nodepool add -g "$RESOURCE_GROUP" --cluster-name "$CLUSTER" \
  --name cvmws \
  --os-type Linux --os-sku Ubuntu \
  --kubernetes-version "$version" \
  --node-vm-size "${VM_SIZE:-Standard_D8s_v5}" \
  --node-count "${NODES:-2}" \
  --node-osdisk-type Managed --node-osdisk-size 200 \
  --labels cvmd.dev/workspaces=true \
  --node-taints cvmd.dev/workspaces=true:NoSchedule

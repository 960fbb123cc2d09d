#!/usr/bin/env bash
# What `ct install --namespace <ns>` of every helm/ocean-c2d/ci/ scenario needs in the cluster first:
# the namespace, the credentials Secrets the scenarios name (with a throwaway operator key), the watched
# namespace of existing-secret-values.yaml, and the Prometheus Operator CRDs that monitoring-values.yaml
# renders objects of. Used by .github/workflows/kind-e2e.yaml.
#
#   e2e/kind/ct-prerequisites.sh <namespace>
set -euo pipefail
namespace="${1:?usage: $0 <namespace>}"
prometheus_operator=v0.81.0  # only its ServiceMonitor and PrometheusRule CRDs are installed
crds="https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/$prometheus_operator/example/prometheus-operator-crd"

apply_namespace() { kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f -; }
apply_namespace "$namespace"
apply_namespace c2d-jobs  # existing-secret-values.yaml watches it
key="0x$(openssl rand -hex 32)"
for secret in ocean-c2d-credentials my-c2d-credentials; do
  # The key from stdin, never on a command line.
  printf '%s' "$key" | kubectl -n "$namespace" create secret generic "$secret" \
    --from-file=operator-private-key=/dev/stdin --dry-run=client -o yaml | kubectl apply -f -
done
kubectl apply --server-side \
  -f "$crds/monitoring.coreos.com_servicemonitors.yaml" \
  -f "$crds/monitoring.coreos.com_prometheusrules.yaml"

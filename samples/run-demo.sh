#!/usr/bin/env bash
# The README's main job (`make run`), after `e2e/cluster/cluster.sh up` has started the local cluster
# with its real node (kubelet + containerd on this machine). Everything below runs for real:
#   1. a local S3 server (versitygw) on the real node's host address, where its pods reach this machine;
#      data under <cache>/demo/s3, root credentials generated once into <cache>/demo/s3.env (0600). It
#      keeps running after the demo (its PID is in <cache>/demo/s3.pid) and is restarted when it is not.
#      The sample inputs (samples/data/) are uploaded to one bucket; results are published to another.
#   2. `helm upgrade --install` of the chart into the namespace ocean-c2d-demo, the operator as a pod on
#      the real node, running the locally built project image; its credentials Secret holds the operator
#      key and the S3 keys (given on stdin, never on a command line).
#   3. the sample ComputeEnvironment (2 slots), placed on the real node, and the three sample Workflows,
#      their algorithms run in the locally built python image (samples/demo.py render).
#   4. `kubectl get workflows --watch` until every Workflow is finished, then each one's published
#      results with the first lines of its outputs (downloaded from the S3 server), where to fetch them,
#      and a few lines of the operator's /metrics (through `kubectl port-forward`).
# The cluster, the release, the Workflows and the S3 server stay. Run it again any time: it deletes the
# previous demo Workflows first.
set -euo pipefail
started="${EPOCHREALTIME/,/.}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
state="$cache/demo"
node_env="$cache/cluster/node.env"
namespace=ocean-c2d-demo
release=ocean-c2d
python="$repo/.venv/bin/python"
demo=("$python" "$repo/samples/demo.py")
creds="$state/s3.env"
s3_root="$state/s3"
s3_pid="$state/s3.pid"
s3_log="$state/s3.log"
mkdir -p "$state"

log() { echo "demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }

if [ ! -f "$node_env" ]; then
  die "the local cluster's real node is not up ($node_env is missing). The demo runs its algorithms and" \
    "its operator there: start it with 'make cluster-up' (e2e/cluster/cluster.sh up; needs root and a" \
    "Debian-family system with apt-get, and not OCEAN_C2D_REAL_NODE=0)."
fi
# shellcheck source=/dev/null
source "$node_env"

tools=(kubernetes helm versitygw)
if ! path="$("$repo/toolchain/build.sh" --path "${tools[@]}" 2>/dev/null)"; then
  "$repo/toolchain/build.sh" "${tools[@]}"  # the S3 server, the first time (a few minutes)
  path="$("$repo/toolchain/build.sh" --path "${tools[@]}")"
fi
export PATH="$path:$PATH"
export KUBECONFIG="${KUBECONFIG:-$("$repo/e2e/cluster/cluster.sh" kubeconfig)}"

if ! kubectl get node "$REAL_NODE_NAME" >/dev/null 2>&1; then
  die "node $REAL_NODE_NAME is not registered with the cluster of $KUBECONFIG: run 'make cluster-up'" \
    "(or e2e/cluster/cluster.sh up) to start or repair it"
fi
if ! kubectl wait --for=condition=Ready "node/$REAL_NODE_NAME" --timeout=60s >/dev/null; then
  die "node $REAL_NODE_NAME is not Ready after 60 s (e2e/cluster/node.sh status says which part is down;" \
    "'make cluster-up' repairs it)"
fi

# --- 1. the S3 server ------------------------------------------------------------------------------
s3_running() { # our versitygw runs (by its PID file) and answers at the endpoint the credentials name
  local pid
  [ -s "$s3_pid" ] && [ -s "$creds" ] || return 1
  pid="$(cat "$s3_pid")"
  [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = versitygw ] && "${demo[@]}" healthy "$creds"
}
start_s3() {
  local pid posix=(posix) i
  if [ -s "$s3_pid" ] && [ "$(basename "$(readlink "/proc/$(cat "$s3_pid")/exe" 2>/dev/null)")" = versitygw ]; then
    log "the S3 server (pid $(cat "$s3_pid")) does not answer: restarting it"
    kill "$(cat "$s3_pid")" 2>/dev/null || true
    sleep 1
  fi
  "${demo[@]}" s3-config "$creds" "$REAL_NODE_HOST_IP" "${OCEAN_C2D_DEMO_S3_PORT:-19000}"
  mkdir -p "$s3_root"
  if ! "${demo[@]}" xattrs "$s3_root"; then
    # The posix backend keeps object metadata in user xattrs; without them, in a sidecar directory.
    mkdir -p "$state/s3-meta"
    posix+=(--sidecar "$state/s3-meta")
  fi
  (
    # shellcheck source=/dev/null
    source "$creds"
    # The root credentials go in versitygw's environment, not on its command line.
    ROOT_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" ROOT_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
      exec setsid versitygw --port "${AWS_ENDPOINT_URL#http://}" --region "$AWS_REGION" --health /health \
      "${posix[@]}" "$s3_root" </dev/null >>"$s3_log" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$s3_pid"
  for i in $(seq 100); do
    if "${demo[@]}" healthy "$creds"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    [ "$i" -lt 100 ] && sleep 0.2
  done
  tail -n 20 "$s3_log" >&2
  die "the S3 server did not come up (log $s3_log)"
}
if s3_running; then
  log "S3 server already running (pid $(cat "$s3_pid"))"
else
  start_s3
  log "S3 server started (pid $(cat "$s3_pid"), log $s3_log)"
fi
# shellcheck source=/dev/null
source "$creds"  # AWS_ENDPOINT_URL, AWS_REGION, OUTPUT_BUCKET, INPUTS_BUCKET and the keys (not exported)
"${demo[@]}" prepare "$creds" "$repo/samples/data"
log "S3 endpoint $AWS_ENDPOINT_URL: inputs in bucket $INPUTS_BUCKET, results go to bucket $OUTPUT_BUCKET"

# --- 2. the chart, the operator as a pod on the real node ------------------------------------------
failed_diagnostics=0
diagnose() {
  local status=$?
  [ -z "${watcher:-}" ] || kill "$watcher" 2>/dev/null || true
  [ -z "${forward:-}" ] || kill "$forward" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ "$failed_diagnostics" = 1 ]; then
    echo "demo: failed; what the namespace $namespace shows:" >&2
    kubectl -n "$namespace" get workflows -o wide >&2 || true
    kubectl -n "$namespace" get pods -o wide >&2 || true
    echo "demo: the operator's last log lines:" >&2
    kubectl -n "$namespace" logs "deploy/$release" --tail=20 >&2 || true
  fi
}
trap diagnose EXIT

# helm installs crds/ on the first install only; applying them first is also how they are upgraded.
kubectl apply --server-side -f "$repo/helm/ocean-c2d/crds/" >/dev/null
kubectl wait --for=condition=Established crd/workflows.oceanprotocol.com crd/computeenvironments.oceanprotocol.com >/dev/null
if [ "$(kubectl get namespace "$namespace" -o jsonpath='{.status.phase}' 2>/dev/null)" = Terminating ]; then
  log "namespace $namespace is being deleted: waiting until it is gone"
  kubectl wait --for=delete "namespace/$namespace" --timeout=180s >/dev/null
fi
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

secret_before="$(kubectl -n "$namespace" get secret ocean-c2d-credentials -o jsonpath='{.data}' 2>/dev/null || true)"
key="$(kubectl -n "$namespace" get secret ocean-c2d-credentials -o jsonpath='{.data.operator-private-key}' 2>/dev/null | base64 -d || true)"
# A throwaway operator key for the demo, made once; a real deployment brings its own (see README).
[ -n "$key" ] || key="$("$python" -c 'import secrets; print("0x" + secrets.token_hex(32))')"
# From stdin (printf is a shell builtin), not --from-literal: a value on a command line is visible to
# every process listing. Publish writes with the AWS_* keys, configure reads s3:// inputs with INPUTS_*.
printf '%s=%s\n' operator-private-key "$key" \
  AWS_ACCESS_KEY_ID "$AWS_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY" \
  INPUTS_AWS_ACCESS_KEY_ID "$AWS_ACCESS_KEY_ID" INPUTS_AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY" |
  kubectl -n "$namespace" create secret generic ocean-c2d-credentials --from-env-file=/dev/stdin \
    --dry-run=client -o yaml |
  kubectl apply --server-side --force-conflicts -f - >/dev/null
secret_after="$(kubectl -n "$namespace" get secret ocean-c2d-credentials -o jsonpath='{.data}')"
unset key

image="${OCEAN_C2D_IMAGE%:*}" tag="${OCEAN_C2D_IMAGE##*:}"
taint="${REAL_NODE_TAINT%:*}"
node_selector="{\"${REAL_NODE_LABEL%%=*}\": \"${REAL_NODE_LABEL#*=}\"}"
tolerations="[{\"key\": \"${taint%%=*}\", \"operator\": \"Equal\", \"value\": \"${taint#*=}\", \"effect\": \"${REAL_NODE_TAINT##*:}\"}]"
failed_diagnostics=1
log "installing the chart: the operator runs $OCEAN_C2D_IMAGE on node $REAL_NODE_NAME"
helm upgrade --install "$release" "$repo/helm/ocean-c2d" -n "$namespace" --skip-crds --wait --timeout 180s \
  --set operator.replicas=1 \
  --set-string image.repository="$image" --set-string image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.pullPolicyForJobs=Never \
  --set-string operator.publish.s3.bucket="$OUTPUT_BUCKET" \
  --set-string operator.publish.s3.region="$AWS_REGION" \
  --set-string operator.publish.s3.endpointUrl="$AWS_ENDPOINT_URL" \
  --set-json "operator.egress.stageEndpoints=[\"$REAL_NODE_HOST_IP/32:${AWS_ENDPOINT_URL##*:}\"]" \
  --set-json "nodeSelector=$node_selector" --set-json "tolerations=$tolerations" \
  --set-json 'computeEnvironments=[]' >/dev/null
if [ -n "$secret_before" ] && [ "$secret_before" != "$secret_after" ]; then
  # The operator reads the Secret's keys at start-up (its stage pods read them at theirs).
  kubectl -n "$namespace" rollout restart "deployment/$release" >/dev/null
fi
kubectl -n "$namespace" rollout status "deployment/$release" --timeout=180s >/dev/null
# The operator's pod (not one still terminating after a restart) and where it runs.
operator_pod="$(kubectl -n "$namespace" get pods -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component=operator" \
  -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} on node {{.spec.nodeName}}{{end}}{{end}}')"
log "operator pod $operator_pod"

kubectl -n "$namespace" delete workflows --all --ignore-not-found --wait=true --timeout=120s >/dev/null

# --- 3. the samples, on the real node --------------------------------------------------------------
rendered="$state/rendered"
"${demo[@]}" render "$node_env" "$creds" "$repo/samples" "$rendered"
kubectl -n "$namespace" apply -f "$rendered/computeenvironment.yaml" -f "$rendered/workflow.yaml"

# --- 4. until they are finished, then their results ------------------------------------------------
kubectl -n "$namespace" get workflows --watch &
watcher=$!
kubectl -n "$namespace" wait --for=condition=Finished workflow --all --timeout=300s >/dev/null
sleep 1  # let the watch print the last line before it is stopped
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
watcher=""
echo
kubectl -n "$namespace" get workflows -o wide
echo
if ! kubectl -n "$namespace" wait --for=condition=Succeeded workflow --all --timeout=5s >/dev/null; then
  die "not every sample Workflow succeeded"
fi
kubectl -n "$namespace" get workflows -o json | "${demo[@]}" results "$creds"

echo
kubectl -n "$namespace" port-forward "svc/$release-metrics" :8000 >"$state/port-forward.log" 2>&1 &
forward=$!
metrics_port=""
for _ in $(seq 50); do
  metrics_port="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$state/port-forward.log" | head -n 1)"
  [ -z "$metrics_port" ] || break
  kill -0 "$forward" 2>/dev/null || break
  sleep 0.2
done
[ -n "$metrics_port" ] || die "kubectl port-forward to the metrics Service failed: $(cat "$state/port-forward.log")"
log "a few lines of the operator's /metrics (kubectl port-forward svc/$release-metrics $metrics_port:8000)"
metrics="$("$python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
  "http://127.0.0.1:$metrics_port/metrics")"
kill "$forward" 2>/dev/null || true
wait "$forward" 2>/dev/null || true
forward=""
grep -E '^ocean_c2d_(workflows\{.*stage="Finished"|workflows_finished_total\{.*outcome="Succeeded"|stage_duration_seconds_count\{.*stage="algorithm"|environment_(allocatable|in_use)\{.*resource="jobs")' \
  <<<"$metrics"

echo
first_output="$(kubectl -n "$namespace" get workflow sample -o jsonpath='{.status.results[?(@.type=="output")].url}' | cut -d' ' -f1)"
log "every sample Workflow finished: Job finished (70), its algorithm run in a pod on $REAL_NODE_NAME"
log "results: S3 endpoint $AWS_ENDPOINT_URL, bucket $OUTPUT_BUCKET (credentials: $creds, mode 0600)"
log "fetch one: .venv/bin/python samples/demo.py get $first_output"
log "  or, with the AWS CLI: (set -a; . $creds; aws s3 cp --endpoint-url \"\$AWS_ENDPOINT_URL\" s3://$OUTPUT_BUCKET/${first_output#"$AWS_ENDPOINT_URL/$OUTPUT_BUCKET/"} -)"
log "the S3 server keeps running (pid $(cat "$s3_pid"), log $s3_log); stop it: kill \"\$(cat $s3_pid)\""
log "done in $(awk -v a="$started" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.0f", b - a }') s"

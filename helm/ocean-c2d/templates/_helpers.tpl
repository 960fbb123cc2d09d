{{/* The chart name, or nameOverride. */}}
{{- define "ocean-c2d.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: fullnameOverride, or <release>-<chart> (just the release when it holds the chart name). */}}
{{- define "ocean-c2d.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ocean-c2d.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ocean-c2d.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ocean-c2d.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ocean-c2d.labels" -}}
helm.sh/chart: {{ include "ocean-c2d.chart" . }}
{{ include "ocean-c2d.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ocean-c2d
{{- end }}

{{- define "ocean-c2d.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ocean-c2d.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader election's two objects, in the release namespace: the Lease (LEASE_NAME) and the signer
Service, whose one EndpointSlice (SIGNER_ENDPOINT_SLICE) has the same name. RBAC, the admission policy and
the operator's settings name them from here. */}}
{{- define "ocean-c2d.leaseName" -}}
{{- include "ocean-c2d.fullname" . }}
{{- end }}

{{- define "ocean-c2d.signerName" -}}
{{- printf "%s-signer" (include "ocean-c2d.fullname" .) }}
{{- end }}

{{/* The image of the operator and of the stage steps. */}}
{{- define "ocean-c2d.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the operator key and storage credentials (CREDENTIALS_SECRET). */}}
{{- define "ocean-c2d.credentialsSecret" -}}
{{- if .Values.credentials.create }}
{{- printf "%s-credentials" (include "ocean-c2d.fullname" .) }}
{{- else }}
{{- required "credentials.existingSecret is required unless credentials.create is true" .Values.credentials.existingSecret }}
{{- end }}
{{- end }}

{{/* True ("true") when the operator watches every namespace. */}}
{{- define "ocean-c2d.clusterwide" -}}
{{- if eq .Values.operator.watchNamespace "*" }}true{{ end }}
{{- end }}

{{/* The namespace the operator watches (and where its Role and the ComputeEnvironments go); the release
namespace when watchNamespace is empty or "*". */}}
{{- define "ocean-c2d.watchNamespace" -}}
{{- if or (not .Values.operator.watchNamespace) (eq .Values.operator.watchNamespace "*") }}
{{- .Release.Namespace }}
{{- else }}
{{- .Values.operator.watchNamespace }}
{{- end }}
{{- end }}

{{/* The RBAC rules of the operator, shared by the Role and the ClusterRole. */}}
{{- define "ocean-c2d.rules" -}}
- apiGroups: [oceanprotocol.com]
  resources: [workflows]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [oceanprotocol.com]
  resources: [workflows/status]
  verbs: [get, patch]
# the children's ownerReferences set blockOwnerDeletion, which needs update on the owner's finalizers
- apiGroups: [oceanprotocol.com]
  resources: [workflows/finalizers]
  verbs: [update]
- apiGroups: [oceanprotocol.com]
  resources: [computeenvironments]
  verbs: [get, list, watch, patch, create]
- apiGroups: [oceanprotocol.com]
  resources: [computeenvironments/status]
  verbs: [get, patch]
# the stage pods: created and deleted, never patched (a pod's spec is immutable)
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps, secrets, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The service accounts of the Workflows' pods (SERVICE_ACCOUNT, ALGORITHM_SERVICE_ACCOUNT). With one
watched namespace the chart creates them there (<fullname>-stage, <fullname>-algorithm unless named); with
all namespaces it cannot, and the names (by default the namespaces' "default") must exist everywhere. */}}
{{- define "ocean-c2d.stageServiceAccount" -}}
{{- $default := printf "%s-stage" (include "ocean-c2d.fullname" .) }}
{{- if include "ocean-c2d.clusterwide" . }}{{ $default = "default" }}{{ end }}
{{- default $default .Values.jobServiceAccounts.stage.name }}
{{- end }}

{{- define "ocean-c2d.algorithmServiceAccount" -}}
{{- $default := printf "%s-algorithm" (include "ocean-c2d.fullname" .) }}
{{- if include "ocean-c2d.clusterwide" . }}{{ $default = "default" }}{{ end }}
{{- default $default .Values.jobServiceAccounts.algorithm.name }}
{{- end }}

{{/* The API's pods (issue 12). Their name label differs from the operator's on purpose: the operator's
Deployment, its metrics and signer Services and SIGNER_POD_SELECTOR select name+instance, and must never
pick an API pod. */}}
{{- define "ocean-c2d.api.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ocean-c2d.name" . }}-api
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: api
{{- end }}

{{- define "ocean-c2d.api.labels" -}}
helm.sh/chart: {{ include "ocean-c2d.chart" . }}
{{ include "ocean-c2d.api.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ocean-c2d
{{- end }}

{{/* The API's objects' name prefix and ServiceAccount. */}}
{{- define "ocean-c2d.api.fullname" -}}
{{- printf "%s-api" (include "ocean-c2d.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ocean-c2d.api.serviceAccountName" -}}
{{- default (include "ocean-c2d.api.fullname" .) .Values.api.serviceAccount.name }}
{{- end }}

{{/* API_NAMESPACE: api.namespace, else the watched namespace (the release's when watching "*"). */}}
{{- define "ocean-c2d.api.namespace" -}}
{{- default (include "ocean-c2d.watchNamespace" .) .Values.api.namespace }}
{{- end }}

{{/* "true" when the API checks signatures (api.auth "on"; YAML may have read an unquoted on/off as a
boolean). */}}
{{- define "ocean-c2d.api.auth" -}}
{{- $auth := .Values.api.auth }}
{{- if not (or (eq (toString $auth) "off") (eq (toString $auth) "false")) }}true{{ end }}
{{- end }}

{{/* Fails the render on API values the API itself would refuse at start (api/settings.py), so that a
broken release never gets installed as pods that crash-loop. Renders nothing. */}}
{{- define "ocean-c2d.api.validate" -}}
{{- if include "ocean-c2d.api.auth" . }}
{{- if not .Values.api.allowedProviders }}
{{- fail "api.allowedProviders is required when api.enabled (the provider addresses allowed to call the API); set api.auth=off explicitly to accept unsigned requests" }}
{{- end }}
{{- else if .Values.api.allowedProviders }}
{{- fail "api.auth is off but api.allowedProviders names providers: unset one of them" }}
{{- end }}
{{- if and .Values.api.namespace (not (include "ocean-c2d.clusterwide" .)) (ne .Values.api.namespace (include "ocean-c2d.watchNamespace" .)) }}
{{- fail "api.namespace must be the namespace the operator watches (operator.watchNamespace), or the operator would never run the API's Workflows" }}
{{- end }}
{{- if not .Values.api.operatorAddress }}
{{- fail "api.operatorAddress is required when api.enabled (the operator key's address, the environments' consumerAddress)" }}
{{- end }}
{{- end }}

{{/* The nonce ConfigMaps of the allowed providers (api/nonces.py: ocean-c2d-api-nonce-<address, lower>). */}}
{{- define "ocean-c2d.api.nonceConfigMaps" -}}
{{- range .Values.api.allowedProviders }}
- {{ printf "ocean-c2d-api-nonce-%s" (lower .) }}
{{- end }}
{{- end }}

{{/*
Chart name, truncated to the 63 characters a label value may have.
*/}}
{{- define "pullhealth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: <release>-pullhealth, or the release name when
it already contains the chart name.
*/}}
{{- define "pullhealth.fullname" -}}
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

{{/*
chart label value: name-version.
*/}}
{{- define "pullhealth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (Deployment selectors are immutable).
*/}}
{{- define "pullhealth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pullhealth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels of every resource.
*/}}
{{- define "pullhealth.labels" -}}
helm.sh/chart: {{ include "pullhealth.chart" . }}
{{ include "pullhealth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: pullhealth
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "pullhealth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pullhealth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference.
*/}}
{{- define "pullhealth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Rules for namespaced resources, shared by the ClusterRole (all namespaces) and the
per-namespace Roles (watchNamespaces). Each rule says why the operator needs it;
docs/install.md has the same table.
*/}}
{{- define "pullhealth.namespacedRules" -}}
# RegistryChecks: listed and watched to run the checks; patch only removes the kopf
# finalizer that earlier builds put on them (no finalizer is added any more).
- apiGroups: ["pullhealth.io"]
  resources: ["registrychecks"]
  verbs: ["get", "list", "watch", "patch"]
# The result of each check is written to the status subresource.
- apiGroups: ["pullhealth.io"]
  resources: ["registrychecks/status"]
  verbs: ["get", "patch"]
# Pods: watched to find containers failing to pull; failing pods are annotated with the
# diagnosis (pullhealth.io/diagnosis, ...). patch could change more than annotations: the
# chart's ValidatingAdmissionPolicy (security.podAdmissionPolicy) refuses any pod change
# by this account other than pullhealth.io/* annotations.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
{{- if and .Values.pods.enabled (ne (toString .Values.pods.restartRecovered) "off") }}
# Restarting recovered pods (pods.restartRecovered): a failing pod whose cause was verified
# fixed is deleted so that its ReplicaSet, StatefulSet or DaemonSet retries the pull now
# (never bare pods or Jobs' pods; uid and resourceVersion preconditions; rate-limited).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete"]
{{- end }}
# Events (core API): list and watch of kubelet's pull-failure Events only (field selector
# reason=Failed,involvedObject.kind=Pod): one watch instead of one list per failing pod;
# without watch, each failing pod's Events are listed (field selector on its uid).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "watch"]
# Events (events.k8s.io): posted on RegistryChecks and pods (PullDiagnosed, CheckFailed,
# ...) under a deterministic name; get reads one back when it exists (409) to tell a
# retry from a repeat, patch counts a repeat in its series.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "get", "patch"]
# Secrets: only get, of the pull secrets a RegistryCheck, pod or ServiceAccount names,
# in that object's own namespace. Never list or watch: the operator does not need to
# see every Secret (rbac.readSecretsClusterWide changes this; default off).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"{{ if .Values.rbac.readSecretsClusterWide }}, "list", "watch"{{ end }}]
# ServiceAccounts: their imagePullSecrets and workload identity annotations
# (azure.workload.identity/client-id) are what a pod would pull with. Listed and watched
# (only those fields are kept) instead of one get per failing pod; get for RegistryChecks.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch"]
{{- if .Values.workloads.enabled }}
# Workload image checks (workloads.enabled): the workload kinds are listed and watched
# (pod templates read, nothing written: Events go on them, never a patch) to check their
# images before pods fail. Read only.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch"]
{{- end }}
{{- if .Values.security.identities.workloadIdentity }}
# Workload identity checks (security.identities.workloadIdentity): a short-lived token
# of the ServiceAccount (TokenRequest), exchanged with Azure AD exactly as the pod's token
# would be. Off by default: with it the operator can mint a token for any account it serves.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{/*
Peering (HA) rules: kopf watches the peering object and patches its keep-alive into it.
*/}}
{{- define "pullhealth.peeringRule" -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/*
Environment of the operator container (only what is set).
*/}}
{{- define "pullhealth.env" -}}
# The pod's name: the reportingInstance of its Events, the holder of RegistryCheck
# claims, and (POD_ID) its identity among peering replicas.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.azure.tenantId }}
- name: AZURE_TENANT_ID
  value: {{ . | quote }}
{{- end }}
{{- with .Values.azure.authorityHost }}
- name: AZURE_AUTHORITY_HOST
  value: {{ . | quote }}
{{- end }}
{{- with .Values.azure.imdsEndpoint }}
- name: PULLHEALTH_IMDS_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nameserver }}
- name: PULLHEALTH_NAMESERVER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.caFile }}
- name: PULLHEALTH_CA_FILE
  value: {{ . | quote }}
{{- end }}
{{- include "pullhealth.apiServerEnv" . }}
{{- if .Values.proxy.url }}
- name: PULLHEALTH_PROXY
  value: {{ .Values.proxy.url | quote }}
{{- else if .Values.proxy.fromEnvironment }}
- name: PULLHEALTH_PROXY
  value: "env"
{{- end }}
{{- with .Values.proxy.noProxy }}
- name: PULLHEALTH_NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}

{{/*
Selector labels of the node agent's pods.
*/}}
{{- define "pullhealth.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pullhealth.name" . }}-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels of the node agent's resources.
*/}}
{{- define "pullhealth.agentLabels" -}}
helm.sh/chart: {{ include "pullhealth.chart" . }}
{{ include "pullhealth.agentSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: pullhealth
{{- end }}

{{/*
Name of the ServiceAccount the node agent runs as.
*/}}
{{- define "pullhealth.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-agent" (include "pullhealth.fullname" .) | trunc 63 | trimSuffix "-") .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
KUBERNETES_SERVICE_HOST/PORT when apiServer.host is set: the in-cluster client then talks to
that address instead of the `kubernetes` Service (operator and agent alike).
*/}}
{{- define "pullhealth.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.apiServer.port | quote }}
{{- end }}
{{- end }}

{{/*
The admission webhook's objects: Service, ValidatingWebhookConfiguration, TLS Secret.
*/}}
{{- define "pullhealth.admissionName" -}}
{{- printf "%s-admission" (include "pullhealth.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

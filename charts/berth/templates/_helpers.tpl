{{/* Name of the chart, overridable. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name appended unless it already contains it. */}}
{{- define "berth.fullname" -}}
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

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: berth
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader election is on exactly when more than one replica runs. */}}
{{- define "berth.leaderElect" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{- end }}
{{- end }}

{{/* Labels and annotations the chart adds to the CRD (crd.yaml is otherwise crds/ verbatim). */}}
{{- define "berth.crdMetadata" -}}
labels:
  {{- include "berth.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/* The container's command line: `berth controller` and its flags (src/controller/config.rs). */}}
{{- define "berth.args" -}}
- controller
{{- range .Values.marathon.urls }}
- --marathon-url={{ . }}
{{- end }}
- --marathon-timeout={{ .Values.marathon.timeout }}
{{- if eq .Values.marathon.auth.type "basic" }}
- --marathon-password-file=/etc/berth/marathon/password
{{- else if eq .Values.marathon.auth.type "token" }}
- --marathon-token-file=/etc/berth/marathon/token
{{- end }}
{{- if or .Values.marathon.ca.configMapName .Values.marathon.ca.secretName }}
- --marathon-ca-file=/etc/berth/marathon-ca/ca.crt
{{- end }}
{{- range .Values.agents.static }}
- --agent={{ .host }}={{ .url }}
{{- end }}
{{- with .Values.agents.app }}
- --agent-app={{ . }}
- --agent-port={{ $.Values.agents.port }}
- --agent-scheme={{ $.Values.agents.scheme }}
{{- end }}
- --agent-timeout={{ .Values.agents.timeout }}
{{- if .Values.agents.token.perHost }}
- --agent-secret-file=/etc/berth/agent/token
{{- else }}
- --agent-token-file=/etc/berth/agent/token
{{- end }}
{{- if or .Values.agents.ca.configMapName .Values.agents.ca.secretName }}
- --agent-ca-file=/etc/berth/agent-ca/ca.crt
{{- end }}
- --tenant-root={{ .Values.tenants.rootTemplate }}
- --app-group={{ .Values.tenants.appGroupTemplate }}
{{- range $namespace, $tenant := .Values.tenants.map }}
- --tenant-map={{ $namespace }}={{ $tenant }}
{{- end }}
{{- if .Values.tenants.mappedNamespacesOnly }}
- --mapped-namespaces-only
{{- end }}
- --resync={{ .Values.resync }}
- --debounce={{ .Values.debounce }}
- --migration-stop-limit={{ .Values.migrationStopLimit }}
- --usage-warning={{ .Values.capacity.usageWarning }}
- --capacity-overcommit={{ .Values.capacity.overcommit }}
- --listen=0.0.0.0:{{ .Values.port }}
{{- if include "berth.leaderElect" . }}
- --leader-elect
- --lease-name={{ .Values.leaderElection.leaseName }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . }}
{{- end }}
{{- end }}

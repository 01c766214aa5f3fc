{{/* Chart name, truncated to a DNS label. */}}
{{- define "dockvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name already contains it. */}}
{{- define "dockvault.fullname" -}}
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

{{- define "dockvault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dockvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dockvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dockvault.labels" -}}
helm.sh/chart: {{ include "dockvault.chart" . }}
{{ include "dockvault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dockvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dockvault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dockvault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "dockvault.helperImage" -}}
{{- default (include "dockvault.image" .) .Values.helperImage }}
{{- end }}

{{/* True (non-empty) when the pipe directory is a node directory shared with the Docker host. */}}
{{- define "dockvault.pipesOnHost" -}}
{{- if and (eq .Values.docker.mode "socket") .Values.pipes.hostPath }}true{{ end }}
{{- end }}

{{/*
The hosts this release serves, one Deployment each: .Values.remoteHosts, or else the one .Values.host. Each entry:
name, dockerHost (tcp mode), tlsSecretName, suffix (appended to resource names; empty for the single host).
*/}}
{{- define "dockvault.hosts" -}}
{{- if .Values.remoteHosts }}
{{- if ne .Values.docker.mode "tcp" }}
{{- fail "remoteHosts needs docker.mode: tcp (each entry is a remote engine over TCP+TLS)" }}
{{- end }}
{{- range .Values.remoteHosts }}
- {name: {{ .name | quote }}, dockerHost: {{ .dockerHost | quote }}, tlsSecretName: {{ .tlsSecretName | quote }}, suffix: {{ printf "-%s" .name | quote }}}
{{- end }}
{{- else }}
- {name: {{ .Values.host | quote }}, dockerHost: {{ .Values.docker.tcp.host | quote }}, tlsSecretName: {{ .Values.docker.tcp.tls.secretName | quote }}, suffix: ""}
{{- end }}
{{- end }}

{{/*
The kopf peering name of .Values.host, exactly as frontends/kube.py's peering_name(host): "dockvault-" + the host as
a DNS label (lowercase, runs of other characters as "-", at most 40 characters, "default" when empty) and, when
that label differs from the host, "-" + the first 6 hex digits of the host's SHA-256.
*/}}
{{- define "dockvault.peeringName" -}}
{{- include "dockvault.peeringNameOf" (toString .Values.host) }}
{{- end }}

{{/* The same for a host name given as the argument (remoteHosts). */}}
{{- define "dockvault.peeringNameOf" -}}
{{- $host := toString . }}
{{- $label := regexReplaceAll "[^a-z0-9-]+" (lower $host) "-" | trimAll "-" | trunc 40 | trimAll "-" }}
{{- $label = default "default" $label }}
{{- if ne $label $host }}
{{- $label = printf "%s-%s" $label (sha256sum $host | trunc 6) }}
{{- end }}
{{- printf "dockvault-%s" $label }}
{{- end }}

{{/* The operator's RBAC rules: only what the kopf handlers need, nothing with `*`. */}}
{{- define "dockvault.rbacRules" -}}
- apiGroups: [dockvault.io]
  resources: [backuppolicies, restorerequests]
  verbs: [get, list, watch, patch]
- apiGroups: [dockvault.io]
  resources: [backups]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [dockvault.io]
  resources: [backuppolicies/status, restorerequests/status, backups/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.peering.enabled }}
- apiGroups: [kopf.dev]
  resources: [{{ if .Values.rbac.clusterWide }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
{{- end }}
{{- if .Values.rbac.clusterWide }}
{{- /* kopf watches CRDs to notice served resources appear; a Role cannot grant these (they are cluster-scoped),
so a namespaced install does without: kopf then only discovers resources at start-up. */}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
{{- if .Values.secrets.enabled }}
- apiGroups: [""]
  resources: [secrets]
  {{- with .Values.secrets.resourceNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: [get]
{{- end }}
{{- end }}

{{/* The chart name, or nameOverride. */}}
{{- define "kvcluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: fullnameOverride, else the release name (with the chart name unless it holds it). */}}
{{- define "kvcluster.fullname" -}}
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

{{/* Name of the operator's objects (Deployment, Service, RBAC, Lease). */}}
{{- define "kvcluster.operatorName" -}}
{{- printf "%s-operator" (include "kvcluster.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "kvcluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: kvcluster
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Labels that select the operator's pods. app.kubernetes.io/name=kvoperator is what each
KVCluster's NetworkPolicy lets through to the nodes' admin routes (operator/src/builders/networkpolicy.rs). */}}
{{- define "kvcluster.operatorSelectorLabels" -}}
app.kubernetes.io/name: kvoperator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "kvcluster.operatorLabels" -}}
{{ include "kvcluster.labels" . }}
{{ include "kvcluster.operatorSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "kvcluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "kvcluster.serviceAccountName" -}}
{{- default (include "kvcluster.operatorName" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The restricted container security context (Pod Security Standard "restricted"). */}}
{{- define "kvcluster.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* The restricted pod security context: the image's non-root user 65532. */}}
{{- define "kvcluster.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Names and labels of the chart's objects.
*/}}

{{- define "mpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name alone when it already contains the chart's name.
*/}}
{{- define "mpo.fullname" -}}
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

{{- define "mpo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mpo.labels" -}}
helm.sh/chart: {{ include "mpo.chart" . }}
{{ include "mpo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: message-pipeline
{{- end }}

{{- define "mpo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mpo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mpo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
The operator's permissions on what it reconciles, wherever it watches (a ClusterRole, or a Role in
watchNamespace). Least privilege: no list/watch of Secrets (read by name only), no delete of
MessagePipelines, only `update` on finalizers.
*/}}
{{- define "mpo.rules" -}}
- apiGroups: ["messagepipeline.io"]
  resources: ["messagepipelines"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["messagepipeline.io"]
  resources: ["messagepipelines/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["messagepipeline.io"]
  resources: ["messagepipelines/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The rebuild Job of a raised spec.elasticsearch.indexGeneration, and spec.audit's CronJob.
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The workers' Role and RoleBinding (rights on their own Leases only).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Worker Leases (watched, expired ones deleted) and the operator's own leader-election Lease. The
# operator grants workers rights on Leases, so RBAC's escalation check requires it to hold them.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Kafka and search-engine credentials, read by the name a MessagePipeline references.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{ include "mpo.eventRules" . }}
{{- end }}

{{/* Cluster-scoped reads, granted cluster-wide in both modes. */}}
{{- define "mpo.namespaceRules" -}}
# Whether a pipeline's namespace is being deleted: its cleanup then leaves what the Secrets
# deleted with it gave access to, instead of holding the namespace forever.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end }}

{{- define "mpo.eventRules" -}}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

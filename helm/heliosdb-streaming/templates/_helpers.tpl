{{/* Names, labels and shared snippets of the heliosdb-streaming chart. */}}

{{- define "heliosdb-streaming.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: <release>-<chart>, or <release> when it already holds the chart's name. */}}
{{- define "heliosdb-streaming.fullname" -}}
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

{{- define "heliosdb-streaming.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "heliosdb-streaming.labels" -}}
helm.sh/chart: {{ include "heliosdb-streaming.chart" . }}
app.kubernetes.io/name: {{ include "heliosdb-streaming.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: heliosdb-streaming
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "heliosdb-streaming.selectorLabels" -}}
app.kubernetes.io/name: {{ include "heliosdb-streaming.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "heliosdb-streaming.componentLabels" -}}
{{ include "heliosdb-streaming.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "heliosdb-streaming.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "heliosdb-streaming.operatorName" -}}
{{- printf "%s-operator" (include "heliosdb-streaming.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "heliosdb-streaming.apiName" -}}
{{- printf "%s-api" (include "heliosdb-streaming.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /* The Host names of the API: its Service's DNS names, then api.allowedHosts (comma-separated). */}}
{{- define "heliosdb-streaming.apiHosts" -}}
{{- $svc := include "heliosdb-streaming.apiName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.api.clusterDomain) -}}
{{- join "," (concat $names .Values.api.allowedHosts) -}}
{{- end }}

{{- define "heliosdb-streaming.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "heliosdb-streaming.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "heliosdb-streaming.apiServiceAccount" -}}
{{- if .Values.api.serviceAccount.create }}
{{- default (include "heliosdb-streaming.apiName" .) .Values.api.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.api.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "heliosdb-streaming.jobManagerServiceAccount" -}}
{{- default (printf "%s-jobmanager" (include "heliosdb-streaming.fullname" .) | trunc 63 | trimSuffix "-") .Values.jobManagers.serviceAccount.name }}
{{- end }}

{{- /* The namespaces job managers run in: the watched ones, else jobManagers.namespaces, else the release's. */}}
{{- define "heliosdb-streaming.jobManagerNamespaces" -}}
{{- $list := .Values.operator.watchNamespaces | default .Values.jobManagers.namespaces | default (list .Release.Namespace) -}}
{{- join "," $list -}}
{{- end }}

{{- define "heliosdb-streaming.secretName" -}}
{{- default (include "heliosdb-streaming.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "heliosdb-streaming.jobNamespace" -}}
{{- default .Release.Namespace .Values.api.jobNamespace }}
{{- end }}

{{/* The operator's S3 settings and credentials: it keeps savepoints and passes them on to workers. */}}
{{- define "heliosdb-streaming.s3Env" -}}
- name: HELIOS_S3_SECURE
  value: {{ .Values.s3.secure | quote }}
{{- with .Values.s3.endpoint }}
- name: HELIOS_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "heliosdb-streaming.secretName" . }}
      key: s3-access-key
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "heliosdb-streaming.secretName" . }}
      key: s3-secret-key
      optional: true
{{- end }}

{{/* The namespaced permissions of the operator (Role or ClusterRole rules): each verb is a request it
makes (kopf's or its own); see operator-rbac.yaml. No "update" but on finalizers: nothing PUTs. */}}
{{- define "heliosdb-streaming.operatorNamespacedRules" -}}
# kopf lists, watches and patches (finalizer, progress annotations); get: a Savepoint's jobRef;
# delete: a StreamingJob whose ttlSecondsAfterFinished is up (its finalizer then purges the job), and the
# old color of a StreamingJobDeployment; create: each color of a StreamingJobDeployment
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# create: a savepoint the operator or the job takes itself (on cancel, upgrade, blue/green switch,
# periodic) is recorded as a Savepoint; delete: retention deleted the savepoint
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["savepoints"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# blue/green deployments: kopf lists, watches and patches them (its finalizer and progress annotations)
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobdeployments"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs/status", "savepoints/status", "streamingjobdeployments/status"]
  verbs: ["patch"]
# the worker pods' and the colors' ownerReferences block the owner's deletion
# (OwnerReferencesPermissionEnforcement)
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs/finalizers", "streamingjobdeployments/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# the workers' headless Service, created once; the garbage collector deletes it with the job
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]  # each job's file (connection strings); written, never read, listed or watched
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]  # core/v1 Events, kopf's and the operator's; a repeat counts on the first (patch)
  verbs: ["create", "patch"]
# a job's opt-in PodDisruptionBudget (spec.podDisruptionBudget): made, changed, removed when turned off
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
{{- end }}

{{- /* What a job manager asks of the API for its one StreamingJob (tests/k8s run it against these). */}}
{{- define "heliosdb-streaming.jobManagerRules" -}}
# get: its StreamingJob at start (and a Savepoint its restoreFrom names); delete: ttlSecondsAfterFinished
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs"]
  verbs: ["get", "delete"]
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs/status", "savepoints/status"]
  verbs: ["patch"]
# create: a savepoint the job takes itself (on cancel or delete, for an upgrade, periodic, the
# autoscaler's) is recorded as a Savepoint; patch: its annotations; delete: retention deleted the savepoint
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["savepoints"]
  verbs: ["get", "create", "patch", "delete"]
# the worker pods' ownerReferences block the owner's deletion (OwnerReferencesPermissionEnforcement)
- apiGroups: ["streaming.heliosdb.io"]
  resources: ["streamingjobs/finalizers"]
  verbs: ["update"]
# its worker pods: started, watched, replaced
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]  # the job's file the workers mount
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]  # a repeat counts on the first Event (patch)
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
{{- end }}

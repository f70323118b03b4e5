{{- define "herald.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "herald.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "herald.cluster" -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if and (not .Values.existingSecret) (or (not .Values.database.url) (not .Values.redis.url)) -}}
{{- fail "replicaCount > 1 is cluster mode: set database.url (postgres://…) and redis.url, or existingSecret with HERALD_DATABASE_URL and HERALD_REDIS_URL" -}}
{{- end -}}
{{- if and .Values.database.url (not (hasPrefix "postgres" .Values.database.url)) -}}
{{- fail "replicaCount > 1 needs PostgreSQL: database.url must be postgres://…" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{- define "herald.secretName" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecret }}{{- else -}}{{ include "herald.fullname" . }}{{- end -}}
{{- end -}}

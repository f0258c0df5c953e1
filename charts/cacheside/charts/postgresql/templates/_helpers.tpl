{{/*
Names, labels and connection facts. The parent chart calls postgresql.fullname,
postgresql.selectorLabels, postgresql.port, postgresql.username, postgresql.database,
postgresql.secretName and postgresql.secretPasswordKey with this chart's own context
(.Subcharts.postgresql), so Postgres' names are defined here once.
*/}}

{{- define "postgresql.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "postgresql.fullname" -}}
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

{{- define "postgresql.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "postgresql.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postgresql.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: database
{{- end }}

{{- define "postgresql.port" -}}
{{- .Values.service.port }}
{{- end }}

{{- define "postgresql.username" -}}
{{- .Values.auth.username }}
{{- end }}

{{- define "postgresql.database" -}}
{{- .Values.auth.database }}
{{- end }}

{{- define "postgresql.secretName" -}}
{{- default (include "postgresql.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "postgresql.secretPasswordKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretPasswordKey }}{{ else }}password{{ end }}
{{- end }}

{{/*
The password for the chart's own Secret: the value if given, else the one already in the cluster (so an
upgrade keeps it), else a new random one. `helm template` cannot look up, so it always generates.
*/}}
{{- define "postgresql.password" -}}
{{- if .Values.auth.password }}
{{- .Values.auth.password }}
{{- else }}
{{- $current := dig "data" "password" "" (lookup "v1" "Secret" .Release.Namespace (include "postgresql.fullname" .)) }}
{{- if $current }}{{ b64dec $current }}{{ else }}{{ randAlphaNum 32 }}{{ end }}
{{- end }}
{{- end }}

{{/* The image, under global.imageRegistry when the parent chart sets one. */}}
{{- define "postgresql.image" -}}
{{- $repository := .Values.image.repository }}
{{- with (.Values.global | default dict).imageRegistry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- printf "%s:%s" $repository .Values.image.tag }}
{{- end }}

{{/* Pull secrets: global.imagePullSecrets (names or {name: …}) and this chart's own. */}}
{{- define "postgresql.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- $secret := ternary (dict "name" .) . (kindIs "string" .) }}
{{- if not (has $secret $secrets) }}
{{- $secrets = append $secrets $secret }}
{{- end }}
{{- end }}
{{- with $secrets }}{{ toYaml . }}{{ end }}
{{- end }}

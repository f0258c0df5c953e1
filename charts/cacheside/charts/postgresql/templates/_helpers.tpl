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
upgrade keeps it), else a new random one, but only where the render can see the cluster. `helm template`,
`--dry-run=client` and Argo CD (which renders with `helm template`) get an empty answer from every `lookup`,
so a generated password would differ on every render: under Argo CD the app would never be in sync, and each
sync would replace the password that the data (Postgres') or the running server (Redis) keeps. Such a render
stops and asks for the password. A render sees the cluster when the namespace's `kube-root-ca.crt` ConfigMap
(which Kubernetes publishes in every namespace) is there: whoever can install this chart can read ConfigMaps.
`helm lint` renders neither an install nor an upgrade and only checks the templates: it gets a random one.
*/}}
{{- define "postgresql.password" -}}
{{- if .Values.auth.password }}
{{- .Values.auth.password }}
{{- else }}
{{- $current := dig "data" "password" "" (lookup "v1" "Secret" .Release.Namespace (include "postgresql.fullname" .)) }}
{{- $live := lookup "v1" "ConfigMap" .Release.Namespace "kube-root-ca.crt" }}
{{- if $current }}
{{- b64dec $current }}
{{- else if or $live (not (or .Release.IsInstall .Release.IsUpgrade)) }}
{{- randAlphaNum 32 }}
{{- else }}
{{- fail (printf "postgresql.auth.password is empty and this render cannot see the cluster (helm template, --dry-run=client, Argo CD, or a namespace that does not exist yet): a generated password would change on every render. Set postgresql.auth.existingSecret to a Secret you manage (recommended with Argo CD or Flux; key: postgresql.auth.existingSecretPasswordKey) or postgresql.auth.password; with helm install --create-namespace, create namespace %s first. See the chart README, Installing with Argo CD and Flux." .Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}

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

{{/* The app's unprivileged role; empty when the app connects as the owner. */}}
{{- define "postgresql.appUsername" -}}
{{- .Values.auth.appUsername }}
{{- end }}

{{- define "postgresql.secretAppPasswordKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretAppPasswordKey }}{{ else }}app-password{{ end }}
{{- end }}

{{/*
The password for the chart's own Secret: the value if given, else the one already in the cluster (so an
upgrade keeps it), else a new random one, but only where the render can see the cluster. `helm template`,
`--dry-run=client` and Argo CD (which renders with `helm template`) get an empty answer from every `lookup`,
so a generated password would differ on every render: under Argo CD the app would never be in sync, and each
sync would replace the password that the data (Postgres') or the running server (Redis) keeps. Such a render
stops and asks for the password. A render sees the cluster when it finds the chart's Secret or the namespace's
`kube-root-ca.crt` ConfigMap (which Kubernetes publishes in every namespace; whoever can install this chart can
read ConfigMaps).
`helm lint` renders neither an install nor an upgrade and only checks the templates: it gets a random one.
*/}}
{{- define "postgresql.password" -}}
{{- include "postgresql.storedPassword" (dict "ctx" . "key" "password" "value" .Values.auth.password "name" "postgresql.auth.password") }}
{{- end }}

{{/* With an explicit owner password and no app password, the app's is derived from it (one-way), so values
that set only auth.password (a GitOps repository's, a dev cluster's) render the same every time. */}}
{{- define "postgresql.appPassword" -}}
{{- $derived := "" }}
{{- if .Values.auth.password }}{{ $derived = printf "cacheside-app-role:%s" .Values.auth.password | sha256sum | trunc 32 }}{{ end }}
{{- include "postgresql.storedPassword" (dict "ctx" . "key" "app-password" "value" (.Values.auth.appPassword | default $derived) "name" "postgresql.auth.appPassword") }}
{{- end }}

{{/* One key of the chart's own Secret, by the rules above: .ctx the chart's context, .key the Secret's key,
.value the explicit value, .name the value's name for the message. */}}
{{- define "postgresql.storedPassword" -}}
{{- $ := .ctx }}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $secret := lookup "v1" "Secret" $.Release.Namespace (include "postgresql.fullname" $) }}
{{- $current := dig "data" .key "" $secret }}
{{- $live := or $secret (lookup "v1" "ConfigMap" $.Release.Namespace "kube-root-ca.crt") }}
{{- if $current }}
{{- b64dec $current }}
{{- else if or $live (not (or $.Release.IsInstall $.Release.IsUpgrade)) }}
{{- randAlphaNum 32 }}
{{- else }}
{{- fail (printf "%s is empty and this render cannot see the cluster (helm template, --dry-run=client, Argo CD, or a namespace that does not exist yet): a generated password would change on every render. Set postgresql.auth.existingSecret to a Secret you manage (recommended with Argo CD or Flux; keys: postgresql.auth.existingSecretPasswordKey and existingSecretAppPasswordKey) or %s; with helm install --create-namespace, create namespace %s first. See the chart README, Installing with Argo CD and Flux." .name .name $.Release.Namespace) }}
{{- end }}
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

{{/*
The label of the pods that may connect (networkpolicy.yaml): the parent chart puts it on its app pods and its
migration Job's, calling this with .Subcharts.postgresql. The value is this instance's fullname, so two releases in one
namespace admit only their own clients.
*/}}
{{- define "postgresql.clientLabels" -}}
{{ include "postgresql.name" . | trunc 56 | trimSuffix "-" }}-client: {{ include "postgresql.fullname" . | quote }}
{{- end }}

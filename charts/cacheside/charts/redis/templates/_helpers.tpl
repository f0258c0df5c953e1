{{/*
Names, labels and connection facts. The parent chart calls redis.fullname, redis.selectorLabels,
redis.port, redis.authEnabled, redis.secretName and redis.secretPasswordKey with this chart's own
context (.Subcharts.redis), so Redis' names are defined here once.
*/}}

{{- define "redis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "redis.fullname" -}}
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

{{- define "redis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end }}

{{- define "redis.port" -}}
{{- .Values.service.port }}
{{- end }}

{{- define "redis.authEnabled" -}}
{{- if .Values.auth.enabled }}true{{ end }}
{{- end }}

{{- define "redis.secretName" -}}
{{- default (include "redis.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "redis.secretPasswordKey" -}}
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
{{- define "redis.password" -}}
{{- if .Values.auth.password }}
{{- .Values.auth.password }}
{{- else }}
{{- $current := dig "data" "password" "" (lookup "v1" "Secret" .Release.Namespace (include "redis.fullname" .)) }}
{{- $live := lookup "v1" "ConfigMap" .Release.Namespace "kube-root-ca.crt" }}
{{- if $current }}
{{- b64dec $current }}
{{- else if or $live (not (or .Release.IsInstall .Release.IsUpgrade)) }}
{{- randAlphaNum 32 }}
{{- else }}
{{- fail (printf "redis.auth.password is empty and this render cannot see the cluster (helm template, --dry-run=client, Argo CD, or a namespace that does not exist yet): a generated password would change on every render. Set redis.auth.existingSecret to a Secret you manage (recommended with Argo CD or Flux; key: redis.auth.existingSecretPasswordKey) or redis.auth.password; with helm install --create-namespace, create namespace %s first. See the chart README, Installing with Argo CD and Flux." .Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The image, under global.imageRegistry when the parent chart sets one. */}}
{{- define "redis.image" -}}
{{- $repository := .Values.image.repository }}
{{- with (.Values.global | default dict).imageRegistry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- printf "%s:%s" $repository .Values.image.tag }}
{{- end }}

{{/* Pull secrets: global.imagePullSecrets (names or {name: …}) and this chart's own. */}}
{{- define "redis.imagePullSecrets" -}}
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
migration Job's, calling this with .Subcharts.redis. The value is this instance's fullname, so two releases in one
namespace admit only their own clients.
*/}}
{{- define "redis.clientLabels" -}}
{{ include "redis.name" . | trunc 56 | trimSuffix "-" }}-client: {{ include "redis.fullname" . | quote }}
{{- end }}

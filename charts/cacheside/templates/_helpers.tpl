{{/* Names and labels, as `helm create` gives them. */}}

{{- define "cacheside.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cacheside.fullname" -}}
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

{{- define "cacheside.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cacheside.labels" -}}
helm.sh/chart: {{ include "cacheside.chart" . }}
{{ include "cacheside.selectorLabels" . }}
app.kubernetes.io/version: {{ include "cacheside.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cacheside.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cacheside.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The serving pods; the migration Job's and test's pods carry other components so the Service never picks them. */}}
{{- define "cacheside.serverSelectorLabels" -}}
{{ include "cacheside.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "cacheside.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cacheside.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cacheside.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "cacheside.image" -}}
{{- include "cacheside.imageRef" (dict "image" .Values.image "tag" (include "cacheside.imageTag" .) "global" .Values.global) }}
{{- end }}

{{/* An image reference: global.imageRegistry in front of the repository, the digest (which pins it) after the tag. */}}
{{- define "cacheside.imageRef" -}}
{{- $repository := .image.repository }}
{{- with (.global | default dict).imageRegistry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- printf "%s:%s" $repository .tag }}
{{- with .image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/* Pull secrets of the release's pods: global.imagePullSecrets (names or {name: …}) and the chart's own. */}}
{{- define "cacheside.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- $secret := ternary (dict "name" .) . (kindIs "string" .) }}
{{- if not (has $secret $secrets) }}
{{- $secrets = append $secrets $secret }}
{{- end }}
{{- end }}
{{- with $secrets }}{{ toYaml . }}{{ end }}
{{- end }}

{{- define "cacheside.terminationGracePeriodSeconds" -}}
{{- add (include "cacheside.preStopSleepSeconds" . | int) .Values.shutdown.timeoutSeconds 5 }}
{{- end }}

{{/* The preStop sleep action is on by default from Kubernetes 1.30 (beta); older API servers drop or reject it. */}}
{{- define "cacheside.preStopSleepSeconds" -}}
{{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version }}{{ .Values.shutdown.preStopSleepSeconds | int }}{{ else }}0{{ end }}
{{- end }}

{{/*
Plain settings of the service: the ConfigMap's data, and the migration Job's inline env (a pre-upgrade hook
runs before the new ConfigMap is applied). Helm reads YAML numbers as float64, so whole numbers are printed
as integers (1048576, not 1.048576e+06).
*/}}
{{- define "cacheside.configData" -}}
SHUTDOWN_TIMEOUT: {{ printf "%ds" (.Values.shutdown.timeoutSeconds | int) | quote }}
REDIS_MODE: {{ ternary "standalone" .Values.externalRedis.mode .Values.redis.enabled | quote }}
OTEL_SERVICE_NAME: {{ .Values.otel.serviceName | default (include "cacheside.name" .) | quote }}
{{- if .Values.otel.enabled }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .Values.otel.protocol | quote }}
OTEL_TRACES_SAMPLER: {{ .Values.otel.sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ .Values.otel.samplerArg | quote }}
{{- else }}
OTEL_SDK_DISABLED: "true"
{{- end }}
{{- range $name, $value := .Values.config }}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{ $name }}: {{ $value | int64 | toString | quote }}
{{- else }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Credentials given inline (externalDatabase.url / externalRedis.url) and the API's tokens: the data of the chart's
Secret. Empty when every credential comes from the subcharts' or the user's Secrets.
*/}}
{{- define "cacheside.secretData" -}}
{{- if not .Values.auth.existingSecret }}
API_TOKENS: {{ include "cacheside.apiTokens" . | b64enc | quote }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.url }}
DATABASE_URL: {{ .Values.externalDatabase.url | b64enc | quote }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.url }}
REDIS_URL: {{ .Values.externalRedis.url | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
The container's env, shared by the Deployment and the migration Job. Passwords never pass through the
chart: a URL comes whole from a Secret (secretKeyRef), or is composed by the kubelet from a password in a
Secret through $(VAR) expansion, so the password var must come first.
*/}}
{{- define "cacheside.env" -}}
{{- $extra := .Values.extraEnv | default list }}
{{- $overridden := dict }}
{{- range $extra }}{{ $_ := set $overridden .name true }}{{ end }}
{{- range include "cacheside.chartEnv" . | fromYamlArray }}
{{- if not (hasKey $overridden .name) }}
- {{ toYaml . | nindent 2 | trim }}
{{- end }}
{{- end }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The variables the chart sets itself. extraEnv comes after them (so its values may expand them) and replaces
any of the same name.
*/}}
{{- define "cacheside.chartEnv" -}}
{{- if .Values.otel.enabled }}
# Downward API, only for the $(…) expansion in OTEL_RESOURCE_ATTRIBUTES below.
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES
  {{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" }}
  {{- range $k, $v := .Values.otel.resourceAttributes }}
  {{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
  {{- end }}
  value: {{ join "," $attrs | quote }}
{{- end }}
# The Go runtime follows the container's limits: all of its CPUs, 90 % of its memory (the rest is for
# what the heap's soft limit does not count: stacks, the runtime's own, the kernel's page cache of the pod).
- name: GOMAXPROCS
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- with include "cacheside.goMemLimit" . }}
- name: GOMEMLIMIT
  value: {{ . | quote }}
{{- end }}
{{- include "cacheside.databaseEnv" . }}
{{- include "cacheside.redisEnv" . }}
{{- if not (hasKey . "migrationCredentials") }}
# Only the server: the migrations serve no requests and are not handed the tokens.
- name: API_TOKENS
  {{- include "cacheside.apiTokensRef" . | nindent 2 }}
{{- if .Values.auth.reads }}
- name: API_AUTH_READS
  value: "true"
{{- end }}
{{- end }}
{{- end }}

{{/*
The API's tokens for the chart's Secret, comma-separated, as the subcharts treat their passwords: the values if
given, else the ones already in the cluster (so an upgrade keeps them), else one new random token, but only where
the render can see the cluster. `helm template`, `--dry-run=client` and Argo CD get an empty answer from every
`lookup`, so a generated token would differ on every render (Argo CD would never be in sync, and each sync would
lock the clients out): such a render stops and asks for auth.tokens or auth.existingSecret. `helm lint` renders
neither an install nor an upgrade: it gets a random one.
*/}}
{{- define "cacheside.apiTokens" -}}
{{- if .Values.auth.tokens }}
{{- join "," .Values.auth.tokens }}
{{- else }}
{{- $current := dig "data" "API_TOKENS" "" (lookup "v1" "Secret" .Release.Namespace (include "cacheside.fullname" .)) }}
{{- $live := lookup "v1" "ConfigMap" .Release.Namespace "kube-root-ca.crt" }}
{{- if $current }}
{{- b64dec $current }}
{{- else if or $live (not (or .Release.IsInstall .Release.IsUpgrade)) }}
{{- randAlphaNum 40 }}
{{- else }}
{{- fail (printf "auth.tokens is empty and this render cannot see the cluster (helm template, --dry-run=client, Argo CD, or a namespace that does not exist yet): a generated API token would change on every render. Set auth.existingSecret to a Secret you manage (recommended with Argo CD or Flux; key: auth.existingSecretTokensKey) or auth.tokens; with helm install --create-namespace, create namespace %s first. See the chart README, Installing with Argo CD and Flux." .Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the pods read API_TOKENS: the chart's Secret, or the user's. */}}
{{- define "cacheside.apiTokensRef" -}}
{{- if .Values.auth.existingSecret }}
{{- include "cacheside.secretRef" (dict "name" .Values.auth.existingSecret "key" .Values.auth.existingSecretTokensKey) }}
{{- else }}
{{- include "cacheside.secretRef" (dict "name" (include "cacheside.fullname" .) "key" "API_TOKENS") }}
{{- end }}
{{- end }}

{{- define "cacheside.secretRef" -}}
valueFrom:
  secretKeyRef:
    name: {{ .name }}
    key: {{ .key }}
{{- end }}

{{/*
The bundled Postgres' unprivileged role the server connects as (postgresql.auth.appUsername), or empty when it
connects as the owner: the role is off, or the server migrates itself (config.DATABASE_MIGRATE_ON_START, as
under Tilt), which takes the owner's rights.
*/}}
{{- define "cacheside.appRole" -}}
{{- if and .Values.postgresql.enabled (not (index .Values.config "DATABASE_MIGRATE_ON_START")) }}
{{- include "postgresql.appUsername" .Subcharts.postgresql }}
{{- end }}
{{- end }}

{{/*
With the bundled Postgres the server connects as its unprivileged role (cacheside.appRole) and the
migrations as the owner: callers that migrate pass the root context with a "migrationCredentials" key
(`merge (dict "migrationCredentials" true) .`).
*/}}
{{- define "cacheside.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
{{- $pg := .Subcharts.postgresql }}
{{- $user := include "postgresql.username" $pg }}
{{- $key := include "postgresql.secretPasswordKey" $pg }}
{{- if and (include "cacheside.appRole" .) (not (hasKey . "migrationCredentials")) }}
{{- $user = include "postgresql.appUsername" $pg }}
{{- $key = include "postgresql.secretAppPasswordKey" $pg }}
{{- end }}
- name: DATABASE_PASSWORD
  {{- include "cacheside.secretRef" (dict "name" (include "postgresql.secretName" $pg) "key" $key) | nindent 2 }}
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(DATABASE_PASSWORD)@%s:%s/%s?sslmode=disable" ($user | urlquery) (include "postgresql.fullname" $pg) (include "postgresql.port" $pg) (include "postgresql.database" $pg | urlquery) | quote }}
{{- else }}
{{- with .Values.externalDatabase }}
{{- if .url }}
- name: DATABASE_URL
  {{- include "cacheside.secretRef" (dict "name" (include "cacheside.fullname" $) "key" "DATABASE_URL") | nindent 2 }}
{{- else if .existingSecretUrlKey }}
- name: DATABASE_URL
  {{- include "cacheside.secretRef" (dict "name" .existingSecret "key" .existingSecretUrlKey) | nindent 2 }}
{{- else }}
- name: DATABASE_PASSWORD
  {{- include "cacheside.secretRef" (dict "name" .existingSecret "key" .existingSecretPasswordKey) | nindent 2 }}
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(DATABASE_PASSWORD)@%s:%d/%s?sslmode=%s" (urlquery .user) .host (.port | int) (urlquery .database) .sslmode | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cacheside.redisEnv" -}}
{{- if .Values.redis.enabled }}
{{- $redis := .Subcharts.redis }}
{{- $auth := "" }}
{{- if include "redis.authEnabled" $redis }}
{{- $auth = ":$(REDIS_PASSWORD)@" }}
- name: REDIS_PASSWORD
  {{- include "cacheside.secretRef" (dict "name" (include "redis.secretName" $redis) "key" (include "redis.secretPasswordKey" $redis)) | nindent 2 }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "redis://%s%s:%s/0" $auth (include "redis.fullname" $redis) (include "redis.port" $redis) | quote }}
{{- else }}
{{- with .Values.externalRedis }}
{{- if .url }}
- name: REDIS_URL
  {{- include "cacheside.secretRef" (dict "name" (include "cacheside.fullname" $) "key" "REDIS_URL") | nindent 2 }}
{{- else if .existingSecretUrlKey }}
- name: REDIS_URL
  {{- include "cacheside.secretRef" (dict "name" .existingSecret "key" .existingSecretUrlKey) | nindent 2 }}
{{- else }}
{{- $userinfo := "" }}
{{- if .existingSecretPasswordKey }}
{{- $userinfo = printf "%s:$(REDIS_PASSWORD)@" (urlquery .username) }}
- name: REDIS_PASSWORD
  {{- include "cacheside.secretRef" (dict "name" .existingSecret "key" .existingSecretPasswordKey) | nindent 2 }}
{{- else if .username }}
{{- $userinfo = printf "%s@" (urlquery .username) }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d%s" (ternary "rediss" "redis" .tls) $userinfo .host (.port | int) (.database | int) (ternary (printf "?%s" .query) "" (ne .query "")) | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Stop with a message that says what to set, rather than render an app that cannot start. */}}
{{- define "cacheside.validate" -}}
{{- $r := .Values.externalRedis }}
{{- if .Values.redis.enabled }}
{{- if or $r.url $r.host $r.existingSecret }}
{{- fail "externalRedis is only used with redis.enabled=false: set redis.enabled=false, or remove externalRedis.url/host/existingSecret" }}
{{- end }}
{{- else }}
{{- $sources := 0 }}
{{- if $r.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.existingSecretUrlKey }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.host }}{{ $sources = add1 $sources }}{{ end }}
{{- if eq $sources 0 }}
{{- fail "redis.enabled=false needs an external Redis: set externalRedis.url, externalRedis.existingSecret with externalRedis.existingSecretUrlKey, or externalRedis.host (see the chart README, External services)" }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "externalRedis: set only one of url, existingSecretUrlKey or host" }}
{{- end }}
{{- if and (or $r.existingSecretUrlKey $r.existingSecretPasswordKey) (not $r.existingSecret) }}
{{- fail "externalRedis.existingSecretUrlKey/existingSecretPasswordKey need externalRedis.existingSecret (the Secret's name)" }}
{{- end }}
{{- end }}
{{- $d := .Values.externalDatabase }}
{{- if .Values.postgresql.enabled }}
{{- if or $d.url $d.host $d.existingSecret }}
{{- fail "externalDatabase is only used with postgresql.enabled=false: set postgresql.enabled=false, or remove externalDatabase.url/host/existingSecret" }}
{{- end }}
{{- else }}
{{- $sources := 0 }}
{{- if $d.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $d.existingSecretUrlKey }}{{ $sources = add1 $sources }}{{ end }}
{{- if $d.host }}{{ $sources = add1 $sources }}{{ end }}
{{- if eq $sources 0 }}
{{- fail "postgresql.enabled=false needs an external Postgres: set externalDatabase.url, externalDatabase.existingSecret with externalDatabase.existingSecretUrlKey, or externalDatabase.host with externalDatabase.existingSecret and externalDatabase.existingSecretPasswordKey (see the chart README, External services)" }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "externalDatabase: set only one of url, existingSecretUrlKey or host" }}
{{- end }}
{{- if and (or $d.existingSecretUrlKey $d.existingSecretPasswordKey) (not $d.existingSecret) }}
{{- fail "externalDatabase.existingSecretUrlKey/existingSecretPasswordKey need externalDatabase.existingSecret (the Secret's name)" }}
{{- end }}
{{- if and $d.host (not $d.existingSecretPasswordKey) }}
{{- fail "externalDatabase.host needs the password: set externalDatabase.existingSecret and externalDatabase.existingSecretPasswordKey" }}
{{- end }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.enabled=true needs otel.endpoint, e.g. http://jaeger-collector.observability.svc:4317" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
The port the OTel SDK dials for the OTLP endpoint, for the NetworkPolicy: the URL's own, else for grpc
the gRPC resolver's default 443 whatever the scheme (otlptracegrpc hands the URL's host to
grpc.NewClient), and for http/protobuf the scheme's (80 for http, 443 for https). Not the collector's
customary 4317/4318: an endpoint without a port is never dialled there.
*/}}
{{- define "cacheside.otlpPort" -}}
{{- $url := urlParse .Values.otel.endpoint }}
{{- $hostPort := regexReplaceAll "^\\[[^\\]]*\\]" $url.host "" }}
{{- if contains ":" $hostPort }}{{ last (splitList ":" $hostPort) }}
{{- else if eq .Values.otel.protocol "grpc" }}443
{{- else if eq $url.scheme "https" }}443
{{- else }}80
{{- end }}
{{- end }}

{{/*
GOMEMLIMIT in bytes: 90 % of the container's memory limit, empty without one. A resourceFieldRef can only
give 100 %. The env helper is shared: containers that run `cacheside migrate` (the Job, the init container)
pass "migrationCredentials" and have migration.resources.
*/}}
{{- define "cacheside.goMemLimit" -}}
{{- $resources := ternary .Values.migration.resources .Values.resources (hasKey . "migrationCredentials") }}
{{- with ($resources.limits | default dict).memory }}
{{- mulf (include "cacheside.quantityBytes" .) 0.9 | floor | int64 }}
{{- end }}
{{- end }}

{{/* A Kubernetes memory quantity (256Mi, 1G, 268435456, 2.5e8) in bytes. */}}
{{- define "cacheside.quantityBytes" -}}
{{- $q := toString . }}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?" $q }}
{{- $unit := trimPrefix $number $q }}
{{- if or (not $number) (not (hasKey $units $unit)) }}
{{- fail (printf "resources.limits.memory %q: use a quantity such as 256Mi or 1Gi" $q) }}
{{- end }}
{{- mulf (float64 $number) (get $units $unit) }}
{{- end }}

{{/* The labels the bundled Postgres' and Redis' NetworkPolicies admit (their <name>.clientLabels): on the app pods
and the migration Job's, the only pods that connect to them. */}}
{{- define "cacheside.dependencyClientLabels" -}}
{{- if .Values.postgresql.enabled }}
{{ include "postgresql.clientLabels" .Subcharts.postgresql }}
{{- end }}
{{- if .Values.redis.enabled }}
{{ include "redis.clientLabels" .Subcharts.redis }}
{{- end }}
{{- end }}

{{/*
The app pods' init container: `cacheside migrate` before the server starts, with the server's own image,
settings and credentials. It needs no hook, so it works the same under `helm install`, Argo CD, Flux and
`kubectl apply` of the rendered manifests. Migrations hold a Postgres advisory lock, so pods starting together
take turns and all but the first find nothing to do. While Postgres is not up yet (a first install), each
attempt fails within DATABASE_CONNECT_TIMEOUT and the kubelet restarts it with its backoff (10s doubling, at
most 5m); the server container does not start before it succeeds. No probe applies to an init container, so
a long migration is not killed as an unresponsive server would be.
*/}}
{{- define "cacheside.migrationInitContainer" -}}
{{- if .Values.migration.enabled }}
- name: migrate
  image: {{ include "cacheside.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate"]
  envFrom:
    - configMapRef:
        name: {{ include "cacheside.fullname" . }}
  env:
    {{- include "cacheside.env" . | trim | nindent 4 }}
  resources:
    {{- toYaml .Values.migration.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/*
The app pods' init container: `cacheside migrate` before the server starts, with the server's own image and
settings, and the schema owner's credentials (the server has an unprivileged role: cacheside.dbRoleInitContainer). It needs no hook, so it works the same under `helm install`, Argo CD, Flux and
`kubectl apply` of the rendered manifests. Migrations hold a Postgres advisory lock, so pods starting together
take turns and all but the first find nothing to do. While Postgres is not up yet (a first install), each
attempt fails within DATABASE_CONNECT_TIMEOUT and the kubelet restarts it with its backoff (10s doubling, at
most 5m); the server container does not start before it succeeds. No probe applies to an init container, so
a long migration is not killed as an unresponsive server would be.
*/}}
{{- define "cacheside.migrationInitContainer" -}}
{{- include "cacheside.dbRoleInitContainer" . }}
{{- if .Values.migration.enabled }}
- name: migrate
  image: {{ include "cacheside.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate"]
  envFrom:
    - configMapRef:
        name: {{ include "cacheside.fullname" . }}
    {{- with .Values.extraEnvFrom }}
    {{- tpl (toYaml .) $ | nindent 4 }}
    {{- end }}
  env:
    {{- include "cacheside.env" (merge (dict "migrationCredentials" true) .) | trim | nindent 4 }}
  resources:
    {{- toYaml .Values.migration.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/*
The bundled Postgres' unprivileged app role (postgresql.auth.appUsername), kept in step by the app pods
themselves, first of their init containers: as the owner, with psql from the Postgres image, it creates the
role if missing and sets its password from the very Secret key the server container reads, so the two cannot
drift (a reinstall, a changed Secret, a release older than the role). The role may SELECT/INSERT/UPDATE/DELETE
the tables and use the sequences, now and (default privileges) those the owner's migrations create later, and
has REPLICATION for the cache's replication follower (a logical slot over the `cacheside` publication);
nothing else: no DDL, no superuser. It also waits for Postgres, so the migrate container after it does not
start against a server that is still initialising.
*/}}
{{- define "cacheside.dbRoleInitContainer" -}}
{{- if include "cacheside.appRole" . }}
{{- $pg := .Subcharts.postgresql }}
- name: db-role
  image: {{ include "postgresql.image" $pg | quote }}
  imagePullPolicy: {{ $pg.Values.image.pullPolicy }}
  command: ["sh", "-c"]
  args:
    - |
      set -eu
      until pg_isready -q; do echo "waiting for $PGHOST:$PGPORT"; sleep 2; done
      psql -X -q -v ON_ERROR_STOP=1 -v role="$APP_ROLE" -v password="$APP_PASSWORD" -v owner="$PGUSER" <<'SQL'
      SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
      ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS REPLICATION PASSWORD :'password';
      GRANT USAGE ON SCHEMA public TO :"role";
      GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"role";
      GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"role";
      ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"role";
      ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"role";
      SQL
      echo "role $APP_ROLE is in step"
  env:
    - name: PGHOST
      value: {{ include "postgresql.fullname" $pg | quote }}
    - name: PGPORT
      value: {{ include "postgresql.port" $pg | quote }}
    - name: PGDATABASE
      value: {{ include "postgresql.database" $pg | quote }}
    - name: PGUSER
      value: {{ include "postgresql.username" $pg | quote }}
    - name: PGPASSWORD
      {{- include "cacheside.secretRef" (dict "name" (include "postgresql.secretName" $pg) "key" (include "postgresql.secretPasswordKey" $pg)) | nindent 6 }}
    - name: PGCONNECT_TIMEOUT
      value: "5"
    - name: APP_ROLE
      value: {{ include "postgresql.appUsername" $pg | quote }}
    - name: APP_PASSWORD
      {{- include "cacheside.secretRef" (dict "name" (include "postgresql.secretName" $pg) "key" (include "postgresql.secretAppPasswordKey" $pg)) | nindent 6 }}
  resources:
    {{- toYaml .Values.migration.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "event-backbone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release full name: "<release>-event-backbone", or the release name when it already says so. */}}
{{- define "event-backbone.fullname" -}}
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

{{- define "event-backbone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "event-backbone.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Stable across upgrades: a Deployment's selector cannot change. */}}
{{- define "event-backbone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "event-backbone.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "event-backbone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "event-backbone.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "event-backbone.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
BACKBONE__DATABASE__URL for the daemon: the whole URL from a Secret, or one
built from database.* with the password from a Secret. Kubernetes expands
$(DB_PASSWORD) because DB_PASSWORD is defined just before it.
*/}}
{{- define "event-backbone.databaseEnv" -}}
{{- $db := .Values.database }}
{{- $s := .Values.secrets.database }}
{{- if and $s.name $s.urlKey }}
- name: BACKBONE__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ $s.name }}
      key: {{ $s.urlKey }}
{{- else if $s.name }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $s.name }}
      key: {{ $s.passwordKey }}
- name: BACKBONE__DATABASE__URL
  value: {{ printf "mysql://%s:$(DB_PASSWORD)@%s:%d/%s" $db.user $db.host (int $db.port) $db.name | quote }}
{{- else }}
- name: BACKBONE__DATABASE__URL
  value: {{ printf "mysql://%s@%s:%d/%s" $db.user $db.host (int $db.port) $db.name | quote }}
{{- end }}
{{- end }}

{{/* The same for the migration Job, with the migration user and its Secret. */}}
{{- define "event-backbone.migrationDatabaseEnv" -}}
{{- $db := .Values.database }}
{{- $s := .Values.migrations.secret }}
{{- if $s.urlKey }}
- name: BACKBONE__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ required "migrations.secret.name is required when migrations.enabled" $s.name }}
      key: {{ $s.urlKey }}
{{- else }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "migrations.secret.name is required when migrations.enabled" $s.name }}
      key: {{ $s.passwordKey }}
- name: BACKBONE__DATABASE__URL
  value: {{ printf "mysql://%s:$(DB_PASSWORD)@%s:%d/%s" .Values.migrations.user $db.host (int $db.port) $db.name | quote }}
{{- end }}
{{- end }}

{{/*
The archiver's database URL (archive.user, archive.secret): only the
archive CronJob reads it; the archiver may DELETE only rows a recorded
archive segment covers (sql/grants-mysql.sql, migration 0006).
*/}}
{{- define "event-backbone.archiverDatabaseEnv" -}}
{{- $db := .Values.database }}
{{- $s := .Values.archive.secret }}
{{- if $s.urlKey }}
- name: BACKBONE__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ required "archive.secret.name is required when archive.enabled" $s.name }}
      key: {{ $s.urlKey }}
{{- else }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "archive.secret.name is required when archive.enabled" $s.name }}
      key: {{ $s.passwordKey }}
- name: BACKBONE__DATABASE__URL
  value: {{ printf "mysql://%s:$(DB_PASSWORD)@%s:%d/%s" .Values.archive.user $db.host (int $db.port) $db.name | quote }}
{{- end }}
{{- end }}

{{/*
Cloud SQL Auth Proxy as a native sidecar: an init container with
restartPolicy Always starts (and passes its startup probe) before the app
containers and is stopped after them.
*/}}
{{- define "event-backbone.cloudSqlProxy" -}}
{{- $p := .Values.cloudSqlProxy }}
- name: cloud-sql-proxy
  image: "{{ $p.image.repository }}:{{ $p.image.tag }}"
  imagePullPolicy: {{ $p.image.pullPolicy }}
  restartPolicy: Always
  args:
    - "--port={{ .Values.database.port }}"
    - "--structured-logs"
    - "--exit-zero-on-sigterm"
    - "--health-check"
    - "--http-address=0.0.0.0"
    - "--http-port={{ $p.healthPort }}"
    {{- if $p.privateIp }}
    - "--private-ip"
    {{- end }}
    {{- range $p.extraArgs }}
    - {{ . | quote }}
    {{- end }}
    - {{ required "cloudSqlProxy.instanceConnectionName is required when cloudSqlProxy.enabled" $p.instanceConnectionName | quote }}
  ports:
    - name: proxy-health
      containerPort: {{ $p.healthPort }}
  startupProbe:
    httpGet:
      path: /startup
      port: proxy-health
    periodSeconds: 1
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: /liveness
      port: proxy-health
    periodSeconds: 10
    failureThreshold: 3
  securityContext:
    # The proxy image's own "nonroot" user.
    runAsUser: 65532
    runAsGroup: 65532
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $p.resources | nindent 4 }}
{{- end }}

{{/* The merge stage's subscription id (src/topology.rs): the backlog autoscaling watches. */}}
{{- define "event-backbone.mergeSubscription" -}}
{{- printf "events.raw.%s-merge-sub" .Values.env }}
{{- end }}

{{/* KEDA and the HPA each own the Deployment's replica count: never both. */}}
{{- define "event-backbone.oneAutoscaler" -}}
{{- if and .Values.keda.enabled .Values.autoscaling.enabled }}
{{- fail "keda.enabled and autoscaling.enabled are exclusive: KEDA creates its own HPA for the Deployment; enable one of them" }}
{{- end }}
{{- end }}

{{/*
Each target's credentials Secret (secrets.<t>Auth), mounted
read-only at /var/run/secrets/event-backbone/<t>/: the ConfigMap names its
files (SPEC §4.3: every secret as <key>_file). Readable by the pod's fsGroup.
*/}}
{{- define "event-backbone.targetAuthVolumes" -}}
{{- with .Values.secrets.netsuiteAuth.name }}
- name: netsuite-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.secrets.suitexAuth.name }}
- name: suitex-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "event-backbone.targetAuthVolumeMounts" -}}
{{- if .Values.secrets.netsuiteAuth.name }}
- name: netsuite-auth
  mountPath: /var/run/secrets/event-backbone/netsuite
  readOnly: true
{{- end }}
{{- if .Values.secrets.suitexAuth.name }}
- name: suitex-auth
  mountPath: /var/run/secrets/event-backbone/suitex
  readOnly: true
{{- end }}
{{- end }}

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

{{/* The merge stage's subscription id (crates/backbone/src/topology.rs): the backlog autoscaling watches. */}}
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
files (docs/spec.md §4.3: every secret as <key>_file). Readable by the pod's fsGroup.
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

{{/*
The egress rules of networkpolicy.yaml, for (dict "root" $ "targets" bool):
DNS, the GKE metadata server, Google APIs, the database, the targets (when
asked) and networkPolicy.egress.extra.
*/}}
{{- define "event-backbone.egressRules" -}}
{{- $v := .root.Values }}
{{- $e := $v.networkPolicy.egress }}
# DNS.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# GKE metadata server (Workload Identity tokens): 169.254.169.254 is
# redirected to 169.254.169.252:988 on Dataplane V2, 127.0.0.1:988 otherwise.
- to:
    - ipBlock:
        cidr: 169.254.169.254/32
    - ipBlock:
        cidr: 169.254.169.252/32
    - ipBlock:
        cidr: 127.0.0.1/32
  ports:
    - port: 80
      protocol: TCP
    - port: 988
      protocol: TCP
# Google APIs (Pub/Sub, Cloud Storage, IAM, Cloud SQL Admin) over HTTPS.
- to:
    {{- toYaml $e.googleApis | nindent 4 }}
  ports:
    - port: 443
      protocol: TCP
# The database: the Cloud SQL instance's server-side proxy, or the server.
- to:
    {{- toYaml $e.database | nindent 4 }}
  ports:
    {{- if $v.cloudSqlProxy.enabled }}
    - port: 3307
      protocol: TCP
    {{- else }}
    - port: {{ $v.database.port }}
      protocol: TCP
    {{- end }}
{{- if .targets }}
{{- with $e.targets }}
# The delivery targets.
{{ toYaml . }}
{{- end }}
{{- end }}
{{- with $e.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "event-backbone.archiveServiceAccountName" -}}
{{- $sa := .Values.archive.serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-archive" (include "event-backbone.fullname" .)) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
BACKBONE__RETENTION__RECORDER_DATABASE_URL for the archive: the user that
records verified segments (archive.recorder), from its own Secret.
*/}}
{{- define "event-backbone.archiveRecorderEnv" -}}
{{- $db := .Values.database }}
{{- $r := .Values.archive.recorder }}
{{- $msg := "archive.recorder.secret.name is required when archive.enabled: the archiver (archive.secret) may only remove what the recorder vouched for" }}
{{- if $r.secret.urlKey }}
- name: BACKBONE__RETENTION__RECORDER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required $msg $r.secret.name }}
      key: {{ $r.secret.urlKey }}
{{- else }}
- name: RECORDER_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required $msg $r.secret.name }}
      key: {{ $r.secret.passwordKey }}
- name: BACKBONE__RETENTION__RECORDER_DATABASE_URL
  value: {{ printf "mysql://%s:$(RECORDER_DB_PASSWORD)@%s:%d/%s" $r.user $db.host (int $db.port) $db.name | quote }}
{{- end }}
{{- end }}

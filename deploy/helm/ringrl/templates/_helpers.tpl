{{- define "ringrl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ringrl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "rollout") */}}
{{- define "ringrl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ringrl.image" -}}
{{- $img := .Values.image -}}
{{- if .Values.gpu.enabled -}}{{- $img = .Values.gpu.image -}}{{- end -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}

{{- define "ringrl.cpuImage" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- define "ringrl.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "ringrl.fullname" .) -}}
{{- else -}}
{{- required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "ringrl.learnerHost" -}}
{{- printf "%s-learner" (include "ringrl.fullname" .) -}}
{{- end -}}

{{/* Env every part shares: the queue, outputs, and where the learner is (engines pull weights
     from it and join its broadcast rendezvous). */}}
{{- define "ringrl.commonEnv" -}}
- name: RINGRL_REDIS__URL
  value: {{ include "ringrl.redisUrl" . | quote }}
- name: RINGRL_RUN__OUTPUT_DIR
  value: /data/runs
- name: RINGRL_LEARNER__PUBLIC_URL
  value: {{ printf "http://%s:%d" (include "ringrl.learnerHost" .) (int .Values.ports.learner) | quote }}
- name: RINGRL_LEARNER__BROADCAST_HOST
  value: {{ include "ringrl.learnerHost" . | quote }}
- name: RINGRL_LEARNER__BROADCAST_PORT
  value: {{ .Values.ports.weightRendezvous | quote }}
- name: RINGRL_LEARNER__WEIGHT_TRANSPORT
  value: {{ ternary "broadcast" "http" .Values.weightBroadcast.enabled | quote }}
- name: RINGRL_LEARNER__BROADCAST_WORLD_SIZE
  value: {{ ternary (add1 (int .Values.rollout.replicas)) 0 .Values.weightBroadcast.enabled | quote }}
- name: RINGRL_LEARNER__BROADCAST_BACKEND
  value: {{ include "ringrl.broadcastBackend" . | quote }}
{{- if .Values.models.initModel.enabled }}
- name: RINGRL_ROLLOUT__MODEL
  value: {{ .Values.models.initModel.path | quote }}
- name: RINGRL_LEARNER__MODEL_PATH
  value: {{ .Values.models.initModel.path | quote }}
{{- end }}
{{- end -}}

{{/* The volume source of the starting model (mounted at /models), or nothing. */}}
{{- define "ringrl.modelsVolume" -}}
{{- if .Values.models.volume -}}
{{- toYaml .Values.models.volume -}}
{{- else if .Values.models.initModel.enabled -}}
persistentVolumeClaim:
  claimName: {{ include "ringrl.fullname" . }}-models
{{- end -}}
{{- end -}}

{{/* The reward sandbox's (rlimit backend) capabilities, for whatever scores code: exactly the
     compose file's set (docs/deploy.md): hand a program its work dir (CHOWN), enter and remove
     it (DAC_OVERRIDE), switch to the slot uid (SETUID, SETGID), end it on time (KILL). */}}
{{- define "ringrl.sandboxCapabilities" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
  add: [CHOWN, DAC_OVERRIDE, SETUID, SETGID, KILL]
{{- end -}}

{{- define "ringrl.broadcastBackend" -}}
{{- .Values.weightBroadcast.backend | default (ternary "nccl" "gloo" .Values.gpu.enabled) -}}
{{- end -}}

{{- define "ringrl.scrapeAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/* Probes: /healthz is liveness (restart me) and open; /readyz is readiness (do not send me work
now: Redis unreachable, a worker down) and needs the API token, which an httpGet probe cannot read
from a file, so readiness runs the image's probe script with the token
(HEALTHCHECK_TOKEN_FILE, ringrl.authEnv). (dict "root" $ "port" .Values.ports.rollout) */}}
{{- define "ringrl.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold }}
readinessProbe:
  exec:
    command: [python3, /usr/local/bin/ringrl-healthcheck, {{ printf "http://127.0.0.1:%d/readyz" (int .port) | quote }}]
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  # A Python start per probe: a loaded node takes more than the default second.
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  failureThreshold: 6
{{- end -}}

{{- define "ringrl.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ringrl.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Resources of a GPU part: (dict "root" $ "part" .Values.rollout "gpus" .Values.gpu.rollout) */}}
{{- define "ringrl.gpuResources" -}}
{{- $res := deepCopy .part.resources -}}
{{- if .root.Values.gpu.enabled -}}
{{- $limits := get $res "limits" | default dict -}}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Where sandbox slots lease their uids (reward.sandbox.uid_lease_dir), shared by every pod on
     a node that scores code: env, mount and volume. */}}
{{- define "ringrl.uidLeaseEnv" -}}
- name: RINGRL_REWARD__SANDBOX__UID_LEASE_DIR
  value: /run/ringrl/sandbox-uids
{{- end -}}

{{- define "ringrl.uidLeaseMount" -}}
- name: sandbox-uids
  mountPath: /run/ringrl/sandbox-uids
{{- end -}}

{{- define "ringrl.uidLeaseVolume" -}}
- name: sandbox-uids
  {{- with .Values.reward.sandbox.uidLeaseHostPath }}
  hostPath:
    path: {{ . }}
    type: DirectoryOrCreate
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{/* The release's secrets (templates/secret.yaml, or auth.existingSecret with the same keys). */}}
{{- define "ringrl.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-secrets" (include "ringrl.fullname" .)) -}}
{{- end -}}

{{/* The Redis ACL file for a dict of the Secret's values: byte for byte what
     protocol.redis_acl.users_acl() writes for the same passwords (tests/deploy/test_helm.py holds
     them equal), so `ringrl init-secrets` and the chart give Redis the same users and rules. */}}
{{- define "ringrl.usersAcl" -}}
user default on >{{ get . "redis-default" }} ~* &* +@all
{{ range $part := list "learner" "rollout" "reward" "driver" -}}
user {{ $part }} on >{{ get $ (printf "redis-%s" $part) }} resetkeys ~ringrl:* resetchannels &ringrl:* nocommands +@read +@write +@stream +@hash +@set +@keyspace +@pubsub +@transaction +@connection +@scripting -@dangerous -@admin
{{ end -}}
user probe on >{{ get . "redis-probe" }} resetkeys resetchannels nocommands +ping
{{ end -}}

{{/* A part's folder of the Secret at /run/secrets/ringrl, laid out as `ringrl init-secrets` lays
     out the part's folder; only that part's keys (items), so a part holds its own Redis login and
     the API token, not the others'. (dict "root" $ "part" "rollout") */}}
{{- define "ringrl.secretsVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "ringrl.secretName" .root }}
    defaultMode: 0440
    items:
      {{- if eq .part "redis" }}
      - {key: users.acl, path: users.acl}
      - {key: redis-probe, path: probe-password}
      {{- else }}
      - {key: api-token, path: api-token}
      - {key: {{ printf "redis-%s" .part }}, path: redis-password}
      {{- if eq .part "rollout" }}
      - {key: admin-token, path: admin-token}
      {{- end }}
      {{- end }}
{{- end -}}

{{- define "ringrl.secretsMount" -}}
- name: secrets
  mountPath: /run/secrets/ringrl
  readOnly: true
{{- end -}}

{{/* What a ringrl server reads from its folder: the API token (required of its callers, sent to
     the others, and sent by its readiness probe) and its own Redis login. (dict "root" $ "part" "rollout") */}}
{{- define "ringrl.authEnv" -}}
- name: RINGRL_AUTH__TOKEN_FILE
  value: /run/secrets/ringrl/api-token
- name: HEALTHCHECK_TOKEN_FILE
  value: /run/secrets/ringrl/api-token
{{- if eq .part "rollout" }}
- name: RINGRL_AUTH__ADMIN_TOKEN_FILE
  value: /run/secrets/ringrl/admin-token
{{- end }}
- name: RINGRL_AUTH__METRICS_OPEN
  value: {{ .root.Values.auth.metricsOpen | quote }}
- name: RINGRL_REDIS__USERNAME
  value: {{ .part }}
- name: RINGRL_REDIS__PASSWORD_FILE
  value: /run/secrets/ringrl/redis-password
{{- end -}}

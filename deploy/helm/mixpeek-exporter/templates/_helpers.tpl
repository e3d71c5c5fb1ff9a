{{/*
Names, labels, and the exporter container shared by the Deployment and the sidecar template.

The container and the names it uses read only .Values and .Release (never .Chart), so another chart can include
"mixpeek-exporter.sidecar" with (dict "Values" <this chart's values> "Release" .Release), whatever its own
chart is called or aliased.
*/}}

{{/* The image tag used when image.tag is empty; tests/deploy/test_chart.py keeps it equal to appVersion. */}}
{{- define "mixpeek-exporter.appVersion" -}}0.1.0{{- end }}

{{- define "mixpeek-exporter.name" -}}
{{- default "mixpeek-exporter" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mixpeek-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mixpeek-exporter.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mixpeek-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mixpeek-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mixpeek-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mixpeek-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pods' labels: the selector's, then commonLabels and podLabels (podLabels win). */}}
{{- define "mixpeek-exporter.podLabels" -}}
{{ include "mixpeek-exporter.selectorLabels" . }}
{{- with merge (deepCopy .Values.podLabels) .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The helm test's pod: never selected by the Service, the PodDisruptionBudget or the NetworkPolicy. */}}
{{- define "mixpeek-exporter.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mixpeek-exporter.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "mixpeek-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "mixpeek-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mixpeek-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag or @digest; global.imageRegistry (a parent chart's) wins over image.registry. */}}
{{- define "mixpeek-exporter.image" -}}
{{- $registry := default .Values.image.registry (.Values.global).imageRegistry }}
{{- $repository := .Values.image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" $registry $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (include "mixpeek-exporter.appVersion" .) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the API key: an existing one, the chart's own, or none (demo). */}}
{{- define "mixpeek-exporter.secretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- include "mixpeek-exporter.fullname" . }}
{{- end }}
{{- end }}

{{/*
The Secret holding the web config (TLS, basic auth): an existing one, the chart's own (when webConfig sets
TLS or users), or none (plain HTTP).
*/}}
{{- define "mixpeek-exporter.webConfigSecret" -}}
{{- $web := .Values.webConfig }}
{{- if $web.existingSecret }}
{{- $web.existingSecret }}
{{- else if or $web.tls.enabled $web.basicAuthUsers $web.httpHeaders }}
{{- printf "%s-web-config" (include "mixpeek-exporter.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mixpeek-exporter.webConfigKey" -}}
{{- if .Values.webConfig.existingSecret }}{{ .Values.webConfig.existingSecretKey }}{{ else }}web-config.yml{{ end }}
{{- end }}

{{/* The chart's web config file, in the exporter-toolkit format the exporter reads. */}}
{{- define "mixpeek-exporter.webConfig" -}}
{{- $web := .Values.webConfig }}
{{- if $web.tls.enabled }}
{{- if not $web.tls.secretName }}
{{- fail "webConfig.tls.enabled needs webConfig.tls.secretName (a kubernetes.io/tls Secret) or webConfig.existingSecret" }}
{{- end }}
tls_server_config:
  cert_file: {{ include "mixpeek-exporter.tlsDir" . }}/tls.crt
  key_file: {{ include "mixpeek-exporter.tlsDir" . }}/tls.key
  {{- with $web.tls.minVersion }}
  min_version: {{ . }}
  {{- end }}
{{- end }}
{{- with $web.basicAuthUsers }}
basic_auth_users:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $web.httpHeaders }}
http_server_config:
  headers:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end }}

{{- define "mixpeek-exporter.scheme" -}}
{{- if .Values.webConfig.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
A probe of the values, its httpGet over HTTPS when the server has TLS. Context: a map with "probe", "Values"
and an optional "path" overriding the httpGet's path.
*/}}
{{- define "mixpeek-exporter.probe" -}}
{{- $probe := deepCopy .probe }}
{{- with $probe.httpGet }}
{{- if $.path }}
{{- $_ := set . "path" $.path }}
{{- end }}
{{- if $.Values.webConfig.tls.enabled }}
{{- $_ := set . "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{- define "mixpeek-exporter.keyDir" -}}/etc/mixpeek{{- end }}
{{- define "mixpeek-exporter.webConfigDir" -}}/etc/mixpeek-exporter/web{{- end }}
{{- define "mixpeek-exporter.tlsDir" -}}/etc/mixpeek-exporter/tls{{- end }}
{{- define "mixpeek-exporter.stateDir" -}}/var/lib/mixpeek-exporter{{- end }}

{{/*
The exporter container. Context: a map with .Values and .Release; an optional key "readinessPath" overrides
the readiness probe's path, and an optional key "shards" (the StatefulSet's replicas) makes each pod poll only its
shard: the exporter parses its ordinal from MIXPEEK_POD_NAME (the image has no shell, and the pod-index label
only exists from Kubernetes 1.28).
*/}}
{{- define "mixpeek-exporter.container" -}}
{{- $v := .Values -}}
- name: mixpeek-exporter
  image: {{ include "mixpeek-exporter.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- with $v.extraArgs }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    - name: MIXPEEK_LISTEN
      value: {{ printf "0.0.0.0:%d" (int $v.port) | quote }}
    - name: MIXPEEK_API_URL
      value: {{ $v.mixpeek.apiUrl | quote }}
    - name: MIXPEEK_NAMESPACES
      value: {{ join "," $v.mixpeek.namespaces | quote }}
    - name: MIXPEEK_SCOPE
      value: {{ $v.mixpeek.scope | quote }}
    - name: MIXPEEK_POLL_INTERVAL
      value: {{ $v.mixpeek.pollInterval | toString | quote }}
    - name: MIXPEEK_PAGE_SIZE
      value: {{ $v.mixpeek.pageSize | toString | quote }}
    - name: MIXPEEK_REQUEST_TIMEOUT
      value: {{ $v.mixpeek.requestTimeout | toString | quote }}
    - name: MIXPEEK_CONCURRENCY
      value: {{ $v.mixpeek.concurrency | toString | quote }}
    - name: MIXPEEK_MAX_REQUESTS_PER_SECOND
      value: {{ $v.mixpeek.maxRequestsPerSecond | toString | quote }}
    {{- with $v.mixpeek.histogramBuckets }}
    - name: MIXPEEK_HISTOGRAM_BUCKETS
      value: {{ join "," . | quote }}
    {{- end }}
    - name: MIXPEEK_LOG_LEVEL
      value: {{ $v.mixpeek.logLevel | quote }}
    - name: MIXPEEK_LOG_FORMAT
      value: json
    - name: MIXPEEK_DEMO
      value: {{ $v.mixpeek.demo | toString | quote }}
    {{- with $.shards }}
    - name: MIXPEEK_TOTAL_SHARDS
      value: {{ . | toString | quote }}
    - name: MIXPEEK_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- end }}
    {{- if include "mixpeek-exporter.secretName" . }}
    - name: MIXPEEK_API_KEY_FILE
      value: {{ printf "%s/%s" (include "mixpeek-exporter.keyDir" .) $v.apiKey.secretKey | quote }}
    {{- end }}
    {{- if include "mixpeek-exporter.webConfigSecret" . }}
    - name: MIXPEEK_WEB_CONFIG_FILE
      value: {{ printf "%s/%s" (include "mixpeek-exporter.webConfigDir" .) (include "mixpeek-exporter.webConfigKey" .) | quote }}
    {{- end }}
    {{- if $v.stateFile.enabled }}
    - name: MIXPEEK_STATE_FILE
      value: {{ printf "%s/state.json" (include "mixpeek-exporter.stateDir" .) | quote }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $v.port }}
      protocol: TCP
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- include "mixpeek-exporter.probe" (dict "probe" . "Values" $v) | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- include "mixpeek-exporter.probe" (dict "probe" . "Values" $v "path" $.readinessPath) | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $web := include "mixpeek-exporter.webConfigSecret" . }}
  {{- if or (include "mixpeek-exporter.secretName" .) $v.stateFile.enabled $web $v.extraVolumeMounts }}
  volumeMounts:
    {{- if include "mixpeek-exporter.secretName" . }}
    - name: mixpeek-api-key
      mountPath: {{ include "mixpeek-exporter.keyDir" . }}
      readOnly: true
    {{- end }}
    {{- if $v.stateFile.enabled }}
    - name: mixpeek-state
      mountPath: {{ include "mixpeek-exporter.stateDir" . }}
    {{- end }}
    {{- if $web }}
    - name: mixpeek-web-config
      mountPath: {{ include "mixpeek-exporter.webConfigDir" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.webConfig.tls.enabled $v.webConfig.tls.secretName }}
    - name: mixpeek-tls
      mountPath: {{ include "mixpeek-exporter.tlsDir" . }}
      readOnly: true
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
The volumes the container mounts: the key's Secret (none in demo mode), the state file's emptyDir, the web
config's Secret and the TLS certificate's, and extraVolumes.
*/}}
{{- define "mixpeek-exporter.volumes" -}}
{{- $secret := include "mixpeek-exporter.secretName" . -}}
{{- if $secret }}
- name: mixpeek-api-key
  secret:
    secretName: {{ $secret }}
    items:
      - key: {{ .Values.apiKey.secretKey }}
        path: {{ .Values.apiKey.secretKey }}
{{- end }}
{{- if .Values.stateFile.enabled }}
- name: mixpeek-state
  emptyDir:
    sizeLimit: {{ .Values.stateFile.sizeLimit }}
{{- end }}
{{- with include "mixpeek-exporter.webConfigSecret" . }}
- name: mixpeek-web-config
  secret:
    secretName: {{ . }}
    items:
      - key: {{ include "mixpeek-exporter.webConfigKey" $ }}
        path: {{ include "mixpeek-exporter.webConfigKey" $ }}
{{- end }}
{{- if and .Values.webConfig.tls.enabled .Values.webConfig.tls.secretName }}
- name: mixpeek-tls
  secret:
    secretName: {{ .Values.webConfig.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Sidecar: the exporter container for another chart's pod spec. The other chart lists this one as a dependency
(alias mixpeekExporter, deployment.enabled: false) and writes in its pod template:

  containers:
    - name: app
      ...
    {{- include "mixpeek-exporter.sidecar" (dict "Values" .Values.mixpeekExporter "Release" .Release) | nindent 4 }}
  volumes:
    {{- include "mixpeek-exporter.sidecarVolumes" (dict "Values" .Values.mixpeekExporter "Release" .Release) | nindent 4 }}

Its readiness probe asks sidecar.readinessPath (/healthz), so the application's pods never wait on the Mixpeek
API to become ready.
*/}}
{{- define "mixpeek-exporter.sidecar" -}}
{{- include "mixpeek-exporter.container" (dict "Values" .Values "Release" .Release "readinessPath" .Values.sidecar.readinessPath) }}
{{- end }}

{{- define "mixpeek-exporter.sidecarVolumes" -}}
{{- include "mixpeek-exporter.volumes" . }}
{{- end }}

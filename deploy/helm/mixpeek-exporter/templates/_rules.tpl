{{/*
The alert rules: the one source of both the PrometheusRule (prometheusrule.yaml) and deploy/prometheus/rules.yaml
(rendered from here with the default values by deploy/prometheus/build.py).

Every expression aggregates with `max by ({{ $g }}<the exporter's own labels>)` before anything else: two exporters that
poll the same namespaces (replicas, or sidecars of a scaled application) export the same series under different
`instance`/`pod` labels, and max keeps one copy of each, so nothing is double-counted or alerted twice.
Labels in alerts.groupBy (e.g. cluster, with one Prometheus or Thanos over several clusters) are kept in every
`by (...)` and `on (...)`, so two clusters' series never merge.

The recording rules (group mixpeek-exporter-recording, recordingRules.enabled) precompute what the dashboard and
the alerts share, named level:metric:operations as Prometheus recommends
(https://prometheus.io/docs/practices/rules/), each deduplicated across exporters like the alerts. The group comes
first, so `promtool test rules` evaluates it before the alerts at each step (a server evaluates groups
concurrently: an alert may see a recorded value one interval late). An alert whose window is a recorded one reads
the recorded series; otherwise, or with recordingRules.enabled=false, it falls back to its own expression.
Prometheus templates in annotations are kept out of Helm's reach with {{` ... `}}.
*/}}
{{- define "mixpeek-exporter.rules" -}}
{{- $a := .Values.alerts -}}
{{- $runbook := $a.runbookUrl -}}
{{- /* The batch alerts' bucket, in Prometheus's template language: with MIXPEEK_BATCH_BUCKET_LABEL=false the
exporter exports no bucket_id and aggregates each namespace's buckets. */ -}}
{{- $bucket := `{{ with $labels.bucket_id }}bucket {{ . }}{{ else }}all buckets{{ end }}` -}}
{{- /* A namespaced alert's dashboard link opens the dashboard on the alert's namespace (the dashboard's variable
`namespace`), the value URL-escaped by Prometheus; after `&` where alerts.dashboardUrl has a query already. */ -}}
{{- $onNamespace := "" -}}
{{- with $a.dashboardUrl }}
{{- $query := ternary "&" "?" (contains "?" .) -}}
{{- $onNamespace = printf "%s%svar-namespace=%s" . $query `{{ $labels.mixpeek_namespace | urlquery }}` -}}
{{- end -}}
{{- $g := "" }}{{ with $a.groupBy }}{{ $g = printf "%s, " (join ", " .) }}{{ end -}}
{{- $recording := .Values.recordingRules.enabled -}}
{{- /* Recorded windows of the task terminal transitions, in seconds: the failure ratio alert reads them. */ -}}
{{- $recorded := dict "5m" 300 "1h" 3600 -}}
groups:
{{- if $recording }}
  - name: mixpeek-exporter-recording
    rules:
{{- range $window := list "5m" "1h" }}
      - record: mixpeek_namespace_status_task_type:mixpeek_task_terminal_transitions:rate{{ $window }}
        expr: |-
          max by ({{ $g }}mixpeek_namespace, status, task_type) (rate(mixpeek_task_terminal_transitions_total[{{ $window }}]))
      - record: mixpeek_namespace_task_type:mixpeek_task_failures:ratio_rate{{ $window }}
        expr: |-
          sum by ({{ $g }}mixpeek_namespace, task_type) (mixpeek_namespace_status_task_type:mixpeek_task_terminal_transitions:rate{{ $window }}{status="FAILED"})
          /
          sum by ({{ $g }}mixpeek_namespace, task_type) (mixpeek_namespace_status_task_type:mixpeek_task_terminal_transitions:rate{{ $window }})
{{- end }}
      - record: mixpeek_namespace_status_task_type_le:mixpeek_task_completion_seconds_bucket:rate5m
        expr: |-
          max by ({{ $g }}mixpeek_namespace, status, task_type, le) (rate(mixpeek_task_completion_seconds_bucket[5m]))
{{- range $q := list 50 90 99 }}
      - record: mixpeek_namespace_status_task_type:mixpeek_task_completion_seconds:p{{ $q }}_5m
        expr: |-
          histogram_quantile({{ divf $q 100 }}, mixpeek_namespace_status_task_type_le:mixpeek_task_completion_seconds_bucket:rate5m)
{{- end }}
      {{- /* Batches are few: over the hour, as the dashboard shows them. */}}
      - record: mixpeek_namespace_status_le:mixpeek_batch_completion_seconds_bucket:rate1h
        expr: |-
          max by ({{ $g }}mixpeek_namespace, status, le) (rate(mixpeek_batch_completion_seconds_bucket[1h]))
{{- range $q := list 50 90 99 }}
      - record: mixpeek_namespace_status:mixpeek_batch_completion_seconds:p{{ $q }}_1h
        expr: |-
          histogram_quantile({{ divf $q 100 }}, mixpeek_namespace_status_le:mixpeek_batch_completion_seconds_bucket:rate1h)
{{- end }}
{{- end }}
  - name: mixpeek-exporter
    rules:
{{- with $a.failedSpike }}{{ if .enabled }}
      - alert: MixpeekTasksFailedSpike
        expr: |-
          (
            max by ({{ $g }}mixpeek_namespace, task_type) (increase(mixpeek_task_terminal_transitions_total{status="FAILED"}[{{ .window }}]))
              >= {{ .minFailures }}
          )
          and on ({{ $g }}mixpeek_namespace, task_type)
          (
            max by ({{ $g }}mixpeek_namespace, task_type) (increase(mixpeek_task_terminal_transitions_total{status="FAILED"}[{{ .window }}]))
            /
            sum by ({{ $g }}mixpeek_namespace, task_type) (
              max by ({{ $g }}mixpeek_namespace, status, task_type) (increase(mixpeek_task_terminal_transitions_total[{{ .window }}]))
            )
              >= {{ .minShare }}
          )
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Spike of FAILED Mixpeek tasks
          description: >-
            {{`{{ $value | humanize }}`}} {{`{{ $labels.task_type }}`}} tasks in namespace {{`{{ $labels.mixpeek_namespace }}`}} FAILED in the last {{ .window }}
            (at least {{ .minFailures }} and at least {{ round (mulf .minShare 100) 2 }}% of the tasks that finished).
          runbook_url: {{ $runbook }}#mixpeektasksfailedspike
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.failureRatio }}{{ if .enabled }}
      - alert: MixpeekTasksFailureRatioHigh
        expr: |-
{{- if and $recording (hasKey $recorded .window) }}
          mixpeek_namespace_task_type:mixpeek_task_failures:ratio_rate{{ .window }} > {{ .maxRatio }}
          and on ({{ $g }}mixpeek_namespace, task_type)
          sum by ({{ $g }}mixpeek_namespace, task_type) (mixpeek_namespace_status_task_type:mixpeek_task_terminal_transitions:rate{{ .window }}) * {{ get $recorded .window }}
            >= {{ .minTerminal }}
{{- else }}
          (
            max by ({{ $g }}mixpeek_namespace, task_type) (increase(mixpeek_task_terminal_transitions_total{status="FAILED"}[{{ .window }}]))
            /
            sum by ({{ $g }}mixpeek_namespace, task_type) (
              max by ({{ $g }}mixpeek_namespace, status, task_type) (increase(mixpeek_task_terminal_transitions_total[{{ .window }}]))
            )
              > {{ .maxRatio }}
          )
          and on ({{ $g }}mixpeek_namespace, task_type)
          (
            sum by ({{ $g }}mixpeek_namespace, task_type) (
              max by ({{ $g }}mixpeek_namespace, status, task_type) (increase(mixpeek_task_terminal_transitions_total[{{ .window }}]))
            )
              >= {{ .minTerminal }}
          )
{{- end }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Many Mixpeek tasks end FAILED
          description: >-
            {{`{{ $value | humanizePercentage }}`}} of the {{`{{ $labels.task_type }}`}} tasks that finished in namespace {{`{{ $labels.mixpeek_namespace }}`}}
            over the last {{ .window }} FAILED (threshold {{ round (mulf .maxRatio 100) 2 }}%).
          runbook_url: {{ $runbook }}#mixpeektasksfailureratiohigh
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.stuckQueued }}{{ if .enabled }}
      - alert: MixpeekTasksStuckQueued
        expr: |-
          max by ({{ $g }}mixpeek_namespace, status, task_type) (mixpeek_task_oldest_active_age_seconds{status=~"PENDING|QUEUED"})
            > {{ .maxAgeSeconds }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek tasks wait too long to start
          description: >-
            The oldest {{`{{ $labels.status }}`}} {{`{{ $labels.task_type }}`}} task in namespace {{`{{ $labels.mixpeek_namespace }}`}} has waited
            {{`{{ $value | humanizeDuration }}`}} (threshold {{ .maxAgeSeconds }}s).
          runbook_url: {{ $runbook }}#mixpeektasksstuckqueued
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.stuckRunning }}{{ if .enabled }}
      - alert: MixpeekTasksStuckRunning
        expr: |-
          max by ({{ $g }}mixpeek_namespace, status, task_type) (mixpeek_task_oldest_active_age_seconds{status=~"IN_PROGRESS|PROCESSING"})
            > {{ .maxAgeSeconds }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek tasks run too long
          description: >-
            The oldest {{`{{ $labels.status }}`}} {{`{{ $labels.task_type }}`}} task in namespace {{`{{ $labels.mixpeek_namespace }}`}} has existed for
            {{`{{ $value | humanizeDuration }}`}} (threshold {{ .maxAgeSeconds }}s).
          runbook_url: {{ $runbook }}#mixpeektasksstuckrunning
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.pollFailing }}{{ if .enabled }}
      - alert: MixpeekExporterPollFailing
        expr: |-
          max by ({{ $g }}mixpeek_namespace) (mixpeek_up) == 0
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: The Mixpeek exporter cannot poll a namespace
          description: >-
            Every exporter's last poll of namespace {{`{{ $labels.mixpeek_namespace }}`}} has failed for {{ .for }}: its task metrics are
            frozen for every task_type. mixpeek_exporter_poll_errors_total{mixpeek_namespace="{{`{{ $labels.mixpeek_namespace }}`}}"} gives the reason.
          runbook_url: {{ $runbook }}#mixpeekexporterpollfailing
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
      - alert: MixpeekExporterBatchPollFailing
        expr: |-
          max by ({{ $g }}mixpeek_namespace) (mixpeek_batches_up) == 0
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: The Mixpeek exporter cannot list a namespace's batches
          description: >-
            Every exporter's last batch listing of namespace {{`{{ $labels.mixpeek_namespace }}`}} has failed for {{ .for }}: its batch
            metrics are frozen (its task metrics are not). mixpeek_exporter_batch_poll_errors_total{mixpeek_namespace="{{`{{ $labels.mixpeek_namespace }}`}}"} gives the reason.
          runbook_url: {{ $runbook }}#mixpeekexporterbatchpollfailing
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.stale }}{{ if .enabled }}
      - alert: MixpeekExporterDataStale
        expr: |-
          time() - max by ({{ $g }}mixpeek_namespace) (mixpeek_exporter_last_success_timestamp_seconds) > {{ .maxAgeSeconds }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek task metrics are stale
          description: >-
            The last complete poll of namespace {{`{{ $labels.mixpeek_namespace }}`}} ended {{`{{ $value | humanizeDuration }}`}} ago
            (threshold {{ .maxAgeSeconds }}s): the metrics of every task_type there are out of date.
          runbook_url: {{ $runbook }}#mixpeekexporterdatastale
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.absent }}{{ if .enabled }}
      - alert: MixpeekExporterAbsent
        expr: |-
          absent(mixpeek_exporter_build_info)
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: No Mixpeek exporter is scraped
          description: >-
            Prometheus has scraped no mixpeek_exporter_build_info for {{ .for }}: no namespace or task_type is watched
            and no other Mixpeek alert can fire.
          runbook_url: {{ $runbook }}#mixpeekexporterabsent
          {{- with $a.dashboardUrl }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.targetDown }}{{ if .enabled }}
      - alert: MixpeekExporterTargetDown
        expr: |-
          up{ {{- $a.jobSelector -}} } == 0
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Prometheus cannot scrape a Mixpeek exporter
          description: >-
            Target {{`{{ $labels.instance }}`}} of job {{`{{ $labels.job }}`}} has failed every scrape for {{ .for }}: with replicas the others
            carry on; with sharding, the namespaces of its shard (every task_type there) are not watched.
          runbook_url: {{ $runbook }}#mixpeekexportertargetdown
          {{- with $a.dashboardUrl }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.targetsMissing }}{{ if .enabled }}
      - alert: MixpeekExporterTargetsMissing
        expr: |-
          count by ({{ $g }}job) (up{ {{- $a.jobSelector -}} } offset {{ .lookback }})
            - (count by ({{ $g }}job) (up{ {{- $a.jobSelector -}} }) or 0 * count by ({{ $g }}job) (up{ {{- $a.jobSelector -}} } offset {{ .lookback }}))
            > 0
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: A Mixpeek exporter target is gone
          description: >-
            Job {{`{{ $labels.job }}`}} has {{`{{ $value | humanize }}`}} scrape targets fewer than {{ .lookback }} ago, for {{ .for }}: a replica or shard
            is no longer discovered, and the namespaces of a missing shard (every task_type there) are not polled.
          runbook_url: {{ $runbook }}#mixpeekexportertargetsmissing
          {{- with $a.dashboardUrl }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.rateLimited }}{{ if .enabled }}
      - alert: MixpeekApiRateLimited
        expr: |-
          max by ({{ $g }}mixpeek_namespace) (increase(mixpeek_exporter_poll_errors_total{reason="rate_limited"}[{{ .window }}]))
            > {{ .maxErrors }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: The Mixpeek API rate-limits the exporter
          description: >-
            {{`{{ $value | humanize }}`}} polls of namespace {{`{{ $labels.mixpeek_namespace }}`}} were refused with HTTP 429 in the last {{ .window }}:
            its metrics (every task_type) lag behind.
          runbook_url: {{ $runbook }}#mixpeekapiratelimited
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.seriesDropped }}{{ if .enabled }}
      - alert: MixpeekExporterSeriesDropped
        expr: |-
          max by ({{ $g }}metric) (increase(mixpeek_exporter_series_dropped_total[{{ .window }}])) > 0
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: The Mixpeek exporter drops series past its cap
          description: >-
            Series of {{`{{ $labels.metric }}`}} past MIXPEEK_MAX_SERIES_PER_METRIC were left out of /metrics in the last {{ .window }}
            ({{`{{ $value | humanize }}`}} counted, each once per poll result): dashboards and alerts on that metric silently miss
            some namespaces, task_types or buckets.
          runbook_url: {{ $runbook }}#mixpeekexporterseriesdropped
          {{- with $a.dashboardUrl }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.batchesFailed }}{{ if .enabled }}
      - alert: MixpeekBatchesFailed
        expr: |-
          max by ({{ $g }}mixpeek_namespace, bucket_id) (increase(mixpeek_batch_terminal_transitions_total{status="FAILED"}[{{ .window }}]))
            >= {{ .minFailures }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek batches FAILED
          description: >-
            {{`{{ $value | humanize }}`}} batches of {{ $bucket }}
            in namespace {{`{{ $labels.mixpeek_namespace }}`}} FAILED in the last {{ .window }} (threshold: at least {{ .minFailures }}):
            their objects were not ingested.
          runbook_url: {{ $runbook }}#mixpeekbatchesfailed
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.batchObjectsFailureRatio }}{{ if .enabled }}
      - alert: MixpeekBatchObjectsFailureRatioHigh
        expr: |-
          (
            max by ({{ $g }}mixpeek_namespace, bucket_id) (increase(mixpeek_batch_objects_total{outcome="failed"}[{{ .window }}]))
            /
            sum by ({{ $g }}mixpeek_namespace, bucket_id) (
              max by ({{ $g }}mixpeek_namespace, bucket_id, outcome) (increase(mixpeek_batch_objects_total[{{ .window }}]))
            )
              > {{ .maxRatio }}
          )
          and on ({{ $g }}mixpeek_namespace, bucket_id)
          (
            sum by ({{ $g }}mixpeek_namespace, bucket_id) (
              max by ({{ $g }}mixpeek_namespace, bucket_id, outcome) (increase(mixpeek_batch_objects_total[{{ .window }}]))
            )
              >= {{ .minObjects }}
          )
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Many objects of Mixpeek batches fail
          description: >-
            {{`{{ $value | humanizePercentage }}`}} of the objects in the batches of {{ $bucket }}
            in namespace {{`{{ $labels.mixpeek_namespace }}`}} that finished in the last {{ .window }} failed
            (threshold {{ round (mulf .maxRatio 100) 2 }}%, at least {{ .minObjects }} objects).
          runbook_url: {{ $runbook }}#mixpeekbatchobjectsfailureratiohigh
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.batchesStuckQueued }}{{ if .enabled }}
      - alert: MixpeekBatchesStuckQueued
        expr: |-
          max by ({{ $g }}mixpeek_namespace, bucket_id, status) (mixpeek_batch_oldest_active_age_seconds{status=~"PENDING|QUEUED"})
            > {{ .maxAgeSeconds }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek batches wait too long to start
          description: >-
            The oldest {{`{{ $labels.status }}`}} batch of {{ $bucket }}
            in namespace {{`{{ $labels.mixpeek_namespace }}`}} was created {{`{{ $value | humanizeDuration }}`}} ago and has not started
            (threshold {{ .maxAgeSeconds }}s).
          runbook_url: {{ $runbook }}#mixpeekbatchesstuckqueued
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- with $a.batchesStuckRunning }}{{ if .enabled }}
      - alert: MixpeekBatchesStuckRunning
        expr: |-
          max by ({{ $g }}mixpeek_namespace, bucket_id, status) (mixpeek_batch_oldest_active_age_seconds{status=~"PROCESSING|IN_PROGRESS"})
            > {{ .maxAgeSeconds }}
        for: {{ .for }}
        {{- with .keepFiringFor }}
        keep_firing_for: {{ . }}
        {{- end }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: Mixpeek batches run too long
          description: >-
            The oldest {{`{{ $labels.status }}`}} batch of {{ $bucket }}
            in namespace {{`{{ $labels.mixpeek_namespace }}`}} was created {{`{{ $value | humanizeDuration }}`}} ago and is still running
            (threshold {{ .maxAgeSeconds }}s).
          runbook_url: {{ $runbook }}#mixpeekbatchesstuckrunning
          {{- with $onNamespace }}
          dashboard_url: {{ . }}
          {{- end }}
{{- end }}{{ end }}
{{- end }}

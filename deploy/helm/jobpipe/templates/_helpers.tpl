{{/*
Names, labels, and the settings each service reads. The lists of setting names below are the
fields of the services' pydantic settings classes; tests/deploy/test_helm_chart.py checks them
against those classes, so a setting added to a service without the chart fails it.
*/}}

{{- define "jobpipe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jobpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "jobpipe.labels" -}}
{{ include "jobpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "jobpipe.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .image (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* Settings of every service (BaseServiceSettings), of every Kafka client (KafkaSettings,
     without the two secrets), and of each service. */}}
{{- define "jobpipe.settings.base" -}}
JOBS_TOPIC LOG_LEVEL LOG_FORMAT SHUTDOWN_TIMEOUT_S METRICS_PORT RETRY_BACKOFF_INITIAL_MS RETRY_BACKOFF_MAX_MS
{{- end -}}
{{- define "jobpipe.settings.kafka" -}}
KAFKA_BOOTSTRAP_SERVERS KAFKA_WAIT_TIMEOUT_S KAFKA_SECURITY_PROTOCOL KAFKA_SASL_MECHANISM KAFKA_SASL_USERNAME KAFKA_SSL_CA_LOCATION KAFKA_SSL_CERTIFICATE_LOCATION KAFKA_SSL_KEY_LOCATION KAFKA_EXTRA_CONFIG KAFKA_PRODUCER_EXTRA_CONFIG KAFKA_CONSUMER_EXTRA_CONFIG KAFKA_ADMIN_EXTRA_CONFIG
{{- end -}}
{{- define "jobpipe.settings.topic-admin" -}}
JOBS_PARTITIONS REPLICATION_FACTOR DLQ_TOPIC CONSUMER_GROUP CONSUMER_MODE RESULTS_TOPIC
{{- end -}}
{{- define "jobpipe.settings.consumer" -}}
HANDLER MAX_ATTEMPTS CONSUMER_GROUP CONSUMER_MODE CONSUMER_WORKERS CONSUMER_CONCURRENCY ORDERING MAX_IN_FLIGHT DLQ_TOPIC STATIC_MEMBERSHIP RESULTS_TOPIC PROCESSING_GUARANTEE DELAY_HOLD_MAX_MS
{{- end -}}
{{- define "jobpipe.settings.producer" -}}
PRODUCER_WORKERS MESSAGES_PER_WORKER PRODUCE_RATE PARTITIONER PRODUCER_LINGER_MS
{{- end -}}
{{/* Set by the chart from kafkaAuth.tls: not taken from `config`. */}}
{{- define "jobpipe.settings.tlsPaths" -}}
KAFKA_SSL_CA_LOCATION KAFKA_SSL_CERTIFICATE_LOCATION KAFKA_SSL_KEY_LOCATION
{{- end -}}

{{/* Fails the render on a `config` name that no service reads (a typo). */}}
{{- define "jobpipe.checkConfig" -}}
{{- $known := list -}}
{{- range $part := list "base" "kafka" "topic-admin" "consumer" "producer" -}}
{{- $known = concat $known (splitList " " (include (printf "jobpipe.settings.%s" $part) $)) -}}
{{- end -}}
{{- range $source := list .Values.config .Values.topicAdmin.config .Values.consumer.config .Values.producer.config -}}
{{- range $name, $_ := $source -}}
{{- if has $name (list "KAFKA_SASL_PASSWORD" "KAFKA_SSL_KEY_PASSWORD" "KAFKA_SASL_PASSWORD_FILE" "KAFKA_SSL_KEY_PASSWORD_FILE") -}}
{{- fail (printf "config: %s: secrets never go in values: name a Secret in kafkaAuth.existingSecret and its keys in kafkaAuth" $name) -}}
{{- end -}}
{{- if not (has $name $known) -}}
{{- fail (printf "config: %s is not a setting of any jobpipe service (docs/configuration.md lists them)" $name) -}}
{{- end -}}
{{- if has $name (splitList " " (include "jobpipe.settings.tlsPaths" $)) -}}
{{- fail (printf "config: %s is set by the chart from kafkaAuth.tls; set that instead" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The settings of one service (.service: topic-admin, consumer, producer) as ConfigMap data:
     config, then the service's own overrides, then the TLS file paths. */}}
{{- define "jobpipe.configData" -}}
{{- $root := .root -}}
{{- $names := concat (splitList " " (include "jobpipe.settings.base" $root)) (splitList " " (include "jobpipe.settings.kafka" $root)) (splitList " " (include (printf "jobpipe.settings.%s" .service) $root)) | uniq -}}
{{- $overrides := dict "topic-admin" $root.Values.topicAdmin.config "consumer" $root.Values.consumer.config "producer" $root.Values.producer.config -}}
{{- $values := merge (dict) (get $overrides .service) $root.Values.config -}}
{{- $tls := $root.Values.kafkaAuth.tls -}}
{{- $paths := dict "KAFKA_SSL_CA_LOCATION" (ternary (printf "/etc/jobpipe/tls/%s" $tls.caKey) "" (ne $tls.caKey "")) "KAFKA_SSL_CERTIFICATE_LOCATION" (ternary (printf "/etc/jobpipe/tls/%s" $tls.certificateKey) "" (ne $tls.certificateKey "")) "KAFKA_SSL_KEY_LOCATION" (ternary (printf "/etc/jobpipe/tls/%s" $tls.privateKeyKey) "" (ne $tls.privateKeyKey "")) -}}
{{- range $name := $names | sortAlpha }}
{{- if hasKey $paths $name }}
{{ $name }}: {{ get $paths $name | quote }}
{{- else }}
{{- if not (hasKey $values $name) }}
{{- fail (printf "config: %s has no value (the chart's values.yaml sets every setting)" $name) }}
{{- end }}
{{ $name }}: {{ get $values $name | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A service's secrets (.key: topicAdmin, consumer, producer) reach it as files, never as
     environment values: KAFKA_SASL_PASSWORD_FILE / KAFKA_SSL_KEY_PASSWORD_FILE point into the
     kafka-secrets volume ("jobpipe.volumes"), mounted from the Secret the user names. */}}
{{- define "jobpipe.secretEnv" -}}
{{- $auth := .root.Values.kafkaAuth -}}
{{- $passwordKey := get $auth.saslPasswordKey .key -}}
{{- if or $passwordKey $auth.tls.keyPasswordKey -}}
{{- if not $auth.existingSecret -}}
{{- fail "kafkaAuth.existingSecret: name the Secret that holds the keys kafkaAuth names" -}}
{{- end -}}
{{- end -}}
{{- if $passwordKey }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/jobpipe/secrets/sasl-password
{{- end }}
{{- if $auth.tls.keyPasswordKey }}
- name: KAFKA_SSL_KEY_PASSWORD_FILE
  value: /etc/jobpipe/secrets/ssl-key-password
{{- end }}
{{- end -}}

{{- define "jobpipe.usesTls" -}}
{{- $tls := .Values.kafkaAuth.tls -}}
{{- if or $tls.caKey $tls.certificateKey $tls.privateKeyKey -}}
{{- if not .Values.kafkaAuth.existingSecret -}}
{{- fail "kafkaAuth.existingSecret: name the Secret that holds the keys kafkaAuth.tls names" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* Volumes: /tmp (the images' WORKDIR; the root filesystem is read-only) and the TLS files. */}}
{{- define "jobpipe.volumes" -}}
{{- $auth := .root.Values.kafkaAuth -}}
{{- $passwordKey := get $auth.saslPasswordKey .key -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "jobpipe.usesTls" .root }}
- name: kafka-tls
  secret:
    secretName: {{ $auth.existingSecret }}
    defaultMode: 0440
    items:
{{- range $key := list $auth.tls.caKey $auth.tls.certificateKey $auth.tls.privateKeyKey }}
{{- if $key }}
      - key: {{ $key }}
        path: {{ $key }}
{{- end }}
{{- end }}
{{- end }}
{{- if or $passwordKey $auth.tls.keyPasswordKey }}
- name: kafka-passwords
  secret:
    secretName: {{ $auth.existingSecret }}
    defaultMode: 0440
    items:
{{- if $passwordKey }}
      - key: {{ $passwordKey }}
        path: sasl-password
{{- end }}
{{- if $auth.tls.keyPasswordKey }}
      - key: {{ $auth.tls.keyPasswordKey }}
        path: ssl-key-password
{{- end }}
{{- end }}
{{- end -}}

{{- define "jobpipe.volumeMounts" -}}
{{- $auth := .root.Values.kafkaAuth -}}
- name: tmp
  mountPath: /tmp
{{- if include "jobpipe.usesTls" .root }}
- name: kafka-tls
  mountPath: /etc/jobpipe/tls
  readOnly: true
{{- end }}
{{- if or (get $auth.saslPasswordKey .key) $auth.tls.keyPasswordKey }}
- name: kafka-passwords
  mountPath: /etc/jobpipe/secrets
  readOnly: true
{{- end }}
{{- end -}}

{{/* What every pod of the chart has: no service account token, non-root, seccomp. */}}
{{- define "jobpipe.podSpecCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The consumer's METRICS_PORT (the lag exporter shares its settings): probes and Service. */}}
{{- define "jobpipe.metricsPort" -}}
{{- get (merge (dict) .Values.consumer.config .Values.config) "METRICS_PORT" | int -}}
{{- end -}}

#!/usr/bin/env bash
# kafka-run-class.sh CLASS [ARGS]: run a class from /opt/kafka/libs the way Apache Kafka's own
# bin/kafka-run-class.sh does, honouring the same variables: KAFKA_HEAP_OPTS (default 256M for tools),
# KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_GC_LOG_OPTS, KAFKA_JMX_OPTS, KAFKA_LOG4J_OPTS (default: the
# tools' log4j2 config, WARN to stderr), KAFKA_OPTS, KAFKA_DEBUG.
set -o errexit -o nounset
if [[ $# -lt 1 ]]; then
    echo "USAGE: $0 classname [opts]" >&2
    exit 1
fi
base_dir=/opt/kafka
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.yaml}"
: "${LOG_DIR:=$base_dir/logs}"
# shellcheck disable=SC2086  # the *_OPTS variables are lists of JVM options
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS ${KAFKA_GC_LOG_OPTS-} ${KAFKA_JMX_OPTS-} \
    "-Dkafka.logs.dir=$LOG_DIR" $KAFKA_LOG4J_OPTS ${KAFKA_OPTS-} \
    -cp "$base_dir/libs/*" "$@"

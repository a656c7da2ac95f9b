#!/bin/sh
# compose.secure.yml's one-shot `kafka-users` (in the Kafka image, in the broker's network
# namespace): a SCRAM-SHA-512 user per service and the least ACLs each needs
# (docs/security.md). It talks to the broker's LOCAL listener, plaintext on 127.0.0.1 inside
# the broker's container only, whose principal (User:ANONYMOUS) is the broker's super user.
# Passwords come from the environment and are never printed. Running it again only re-sets the
# same.
set -eu
bootstrap=127.0.0.1:19092
jobs="${JOBS_TOPIC:-jobs}"
dlq="${DLQ_TOPIC:-jobs.dlq}"
group="${CONSUMER_GROUP:-worker-group}"

user() {  # name password
    kafka-configs.sh --bootstrap-server "$bootstrap" --alter --entity-type users --entity-name "$1" \
        --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]" >/dev/null
    echo "kafka-users: user $1 (SCRAM-SHA-512)"
}
allow() {  # principal, then kafka-acls.sh's resource and operation flags
    principal="$1"
    shift
    kafka-acls.sh --bootstrap-server "$bootstrap" --add --allow-principal "User:$principal" "$@" >/dev/null
    echo "kafka-users: User:$principal may $*"
}

user jobpipe-admin "${JOBPIPE_ADMIN_PASSWORD:?JOBPIPE_ADMIN_PASSWORD is not set}"
user jobpipe-producer "${JOBPIPE_PRODUCER_PASSWORD:?JOBPIPE_PRODUCER_PASSWORD is not set}"
user jobpipe-consumer "${JOBPIPE_CONSUMER_PASSWORD:?JOBPIPE_CONSUMER_PASSWORD is not set}"

allow jobpipe-admin --operation Create --operation Describe --operation DescribeConfigs \
    --operation AlterConfigs --topic '*'
allow jobpipe-admin --operation Describe --group '*'
allow jobpipe-producer --operation Write --topic "$jobs"
allow jobpipe-consumer --operation Read --topic "$jobs" --group "$group"
allow jobpipe-consumer --operation Write --topic "$dlq"

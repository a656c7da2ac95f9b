#!/bin/sh
# compose.secure.yml's one-shot `kafka-users` (in the Kafka image, in the broker's network
# namespace): a SCRAM-SHA-512 user per service and the least ACLs each needs
# (docs/security.md). It talks to the broker's LOCAL listener, plaintext on 127.0.0.1 inside
# the broker's container only, whose principal (User:ANONYMOUS) is the broker's super user.
# Passwords come from files (compose secrets) named by JOBPIPE_<USER>_PASSWORD_FILE and are never
# printed. Running it again only re-sets the same.
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

password() {  # a *_FILE variable's name and value -> the password in that file
    if [ -z "$2" ] || [ ! -r "$2" ] || [ ! -s "$2" ]; then
        echo "kafka-users: $1='$2': cannot read the password" >&2
        exit 2
    fi
    cat "$2"
}
# Assignments, so that `set -e` stops the script when a file cannot be read.
admin=$(password JOBPIPE_ADMIN_PASSWORD_FILE "${JOBPIPE_ADMIN_PASSWORD_FILE:-}")
producer=$(password JOBPIPE_PRODUCER_PASSWORD_FILE "${JOBPIPE_PRODUCER_PASSWORD_FILE:-}")
consumer=$(password JOBPIPE_CONSUMER_PASSWORD_FILE "${JOBPIPE_CONSUMER_PASSWORD_FILE:-}")
user jobpipe-admin "$admin"
user jobpipe-producer "$producer"
user jobpipe-consumer "$consumer"

# Each kafka-acls.sh is a JVM start (seconds): one call per principal and set of operations.
allow jobpipe-admin --operation Create --operation Describe --operation DescribeConfigs \
    --operation AlterConfigs --topic '*'
allow jobpipe-admin --operation Describe --group '*'
# `topic-admin redrive`: read the DLQ, copy to the jobs topic and record the copies in the
# ledger (<DLQ_TOPIC>.redriven, made by the first run: Create above) in one transaction, under
# the transactional id topic-admin-redrive.<DLQ_TOPIC> (Write implies Describe).
# `topic-admin offsets --execute`: an offset commit needs Read on the group and on the topic.
allow jobpipe-admin --operation Read --topic "$dlq" --topic "$dlq.redriven" --topic "$jobs" --group "$group"
allow jobpipe-admin --operation Write --topic "$jobs" --topic "$dlq.redriven" \
    --transactional-id "topic-admin-redrive.$dlq"
allow jobpipe-producer --operation Write --topic "$jobs"
# The consumer; the lag exporter (as jobpipe-consumer) also reads the DLQ and the ledger, to
# count the dead letters waiting. Delayed jobs: a member parks them in the delay tiers
# (<JOBS_TOPIC>.delay.*), and its tier mover (group <CONSUMER_GROUP>.delays) reads them there and
# writes them on, to a lower tier or back to the jobs topic (docs/delays.md).
tiers="$jobs.delay.5s $jobs.delay.1m $jobs.delay.10m $jobs.delay.1h"
tier_flags=""
for tier in $tiers; do tier_flags="$tier_flags --topic $tier"; done
# shellcheck disable=SC2086 # tier_flags: one word per flag (topic names have no spaces)
allow jobpipe-consumer --operation Read --topic "$jobs" --topic "$dlq" --topic "$dlq.redriven" $tier_flags \
    --group "$group" --group "$group.delays"
# shellcheck disable=SC2086
allow jobpipe-consumer --operation Write --topic "$dlq" --topic "$jobs" $tier_flags

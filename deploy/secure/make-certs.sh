#!/bin/sh
# compose.secure.yml's one-shot `kafka-certs` (in the Kafka image, as its non-root user): a CA
# and the broker's TLS certificate, made on the machine that runs them and kept in the
# `kafka-tls` volume, never in git. Writes /etc/kafka/secrets/broker.p12 (the broker's key and
# certificate, PKCS12, protected by the password in the file KAFKA_TLS_STORE_PASSWORD_FILE names,
# a compose secret; keytool reads it from that file, never from its command line) and ca.pem
# (what clients trust). The CA's key
# is thrown away: nothing else is ever signed with it. A volume that has them already is left
# as it is (delete the volume to make new ones: `docker compose ... down -v`).
set -eu
out=/etc/kafka/secrets
passfile="${KAFKA_TLS_STORE_PASSWORD_FILE:?KAFKA_TLS_STORE_PASSWORD_FILE is not set}"
if [ ! -s "$passfile" ] || [ ! -r "$passfile" ]; then
    echo "kafka-certs: KAFKA_TLS_STORE_PASSWORD_FILE=$passfile: cannot read the password" >&2
    exit 2
fi
if [ -s "$out/broker.p12" ] && [ -s "$out/ca.pem" ]; then
    echo "kafka-certs: the broker's certificate is already in the kafka-tls volume"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store() { keytool -storetype PKCS12 -storepass:file "$passfile" "$@"; }
store -genkeypair -keystore "$work/ca.p12" -alias ca -dname "CN=jobpipe local CA" -keyalg RSA \
    -keysize 2048 -validity 825 -ext bc:c
store -exportcert -keystore "$work/ca.p12" -alias ca -rfc -file "$work/ca.pem"
store -genkeypair -keystore "$work/broker.p12" -alias broker -dname "CN=kafka" -keyalg RSA \
    -keysize 2048 -validity 825
store -certreq -keystore "$work/broker.p12" -alias broker -file "$work/broker.csr"
store -gencert -keystore "$work/ca.p12" -alias ca -infile "$work/broker.csr" -outfile "$work/broker.pem" \
    -rfc -validity 825 -ext "SAN=dns:kafka,dns:localhost,ip:127.0.0.1"
store -importcert -keystore "$work/broker.p12" -alias ca -file "$work/ca.pem" -noprompt
store -importcert -keystore "$work/broker.p12" -alias broker -file "$work/broker.pem"
install -m 0600 "$work/broker.p12" "$out/broker.p12"
install -m 0644 "$work/ca.pem" "$out/ca.pem"
echo "kafka-certs: made a CA and the broker's certificate (kafka, localhost, 127.0.0.1)"

"""jobpipe: the library every service of the job pipeline imports.

It exists so that the producer, consumer, topic-admin and in-memory services read their
configuration, retry, log, talk to Kafka and shut down in exactly one way.
"""

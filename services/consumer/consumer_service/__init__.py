"""The consumer service: processes jobs from JOBS_TOPIC as a member of CONSUMER_GROUP."""

"""The producer service: publishes the seed's jobs (or a continuous stream) to JOBS_TOPIC."""

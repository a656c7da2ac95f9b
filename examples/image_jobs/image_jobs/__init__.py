"""Example jobpipe handlers: HANDLER=image_jobs.jobs:registry."""

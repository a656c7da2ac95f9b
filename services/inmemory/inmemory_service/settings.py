"""The in-memory service's settings (environment variables)."""

from __future__ import annotations

from pydantic import Field

from jobpipe.settings import BaseServiceSettings, HandlerSettings


class InMemorySettings(BaseServiceSettings, HandlerSettings):
    producers: int = Field(2, ge=1, le=256, description="Producer threads.")
    jobs_per_producer: int = Field(
        10, ge=0, le=1_000_000_000, description="Jobs each producer makes; 0 = until stopped.")
    consumers: int = Field(2, ge=1, le=256, description="Consumer threads.")
    queue_capacity: int = Field(
        100, ge=1, le=10_000_000, description="Queue bound: producers block while it is full.")

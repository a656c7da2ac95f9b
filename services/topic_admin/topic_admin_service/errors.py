"""The ways topic-admin's commands refuse or fail. Their exit codes come from jobpipe.errors
(the one table): a refusal is bad input, like a bad setting (exit 2); a failure exits 1."""

from __future__ import annotations

from jobpipe.errors import ConfigError, ServiceError


class Refused(ConfigError):
    """What was asked cannot be done as asked, and nothing was changed: a topic or group that
    does not exist, a partition the topic does not have, `offsets --execute` while the group
    has active members. One line on stderr, exit 2."""


class RedriveFailed(ServiceError):
    """A redrive stopped on an error it cannot retry (say, another redrive of the same DLQ
    took over). The moves committed before it stay; the one in flight was not committed."""

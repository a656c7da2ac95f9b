"""`producer submit`: jobs from a shell or a script, through jobpipe.client.JobClient.

    producer submit [--type T] [--key K] [--id I] [--json] [--jobs] [PAYLOAD_JSON ...]

Each argument is one job's payload (a JSON value). Without arguments, stdin is read: one JSON
value per line, each a payload; with --jobs, each line is a job object instead,
{"payload": ..., "type": ..., "key": ..., "id": ..., "headers": {...}} (all optional; what a
line leaves out comes from --type/--key). Blank lines are skipped. Every input is checked
before anything is sent: a bad one sends nothing. Then every job is sent without waiting for
the one before, and once all are acknowledged, each id is printed on stdout in input order (with
--json, one object per line: id, partition, offset).

Exit codes: 0 every job acknowledged; 2 bad input or settings (the line names the argument or
stdin line); 3 Kafka not reachable within KAFKA_WAIT_TIMEOUT_S, or it refuses this client, or
JOBS_TOPIC does not exist; 1 anything else (a job not acknowledged: each one named on stderr).
Log lines go to stderr, so stdout holds only the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TextIO

from confluent_kafka import KafkaError, Message

from jobpipe.client import JobClient, client_settings, encode_job
from jobpipe.errors import ConfigError, ExitCode, ServiceError, exit_code_for
from jobpipe.job import InvalidJob, Job
from jobpipe.logs import configure_logging

NAME = "producer submit"
JOB_FIELDS = frozenset({"payload", "type", "key", "id", "headers"})


class BadInput(Exception):
    """An argument or stdin line that is not a job; the message names it."""


@dataclass
class Submission:
    """One job to send and, once reported, where it went or why it did not."""

    where: str  # "argument 2", "line 5": how error lines name it
    job: Job
    headers: dict[str, str] | None = None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None
    reported: threading.Event = field(default_factory=threading.Event)

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.partition, self.offset = message.partition(), message.offset()
        else:
            self.error = error.str()
        self.reported.set()


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog=NAME, description="Submit jobs to JOBS_TOPIC.")
    commands.add_argument("payloads", nargs="*", metavar="PAYLOAD_JSON",
                          help="one job's payload (JSON) per argument; none: JSON lines on stdin")
    commands.add_argument("--type", help="the jobs' type (which handler runs them)")
    commands.add_argument("--key", help="the jobs' key (Kafka message key, ordering unit)")
    commands.add_argument("--id", help="the job's id (one job only; default: a new one)")
    commands.add_argument("--delay", type=float, metavar="SECONDS",
                          help="no consumer starts the jobs before SECONDS from now (their not_before)")
    commands.add_argument("--at", metavar="RFC3339",
                          help="no consumer starts the jobs before this time, e.g. 2030-01-01T09:00:00Z")
    commands.add_argument("--jobs", action="store_true",
                          help='stdin lines are job objects: {"payload", "type", "key", "id", "headers"}')
    commands.add_argument("--json", action="store_true",
                          help="print one JSON object per job (id, partition, offset) instead of its id")
    return commands


def read_inputs(options: argparse.Namespace, stdin: TextIO) -> list[Submission]:
    """Every job of the input, or BadInput naming the first bad argument or line."""
    if options.payloads and options.jobs:
        raise BadInput("--jobs reads job objects from stdin: give no PAYLOAD_JSON arguments")
    if options.payloads:
        inputs = [(f"argument {n}", text) for n, text in enumerate(options.payloads, start=1)]
    else:
        inputs = [(f"stdin line {n}", text) for n, text in enumerate(stdin, start=1) if text.strip()]
    submissions = [_submission(where, text, options) for where, text in inputs]
    if options.id is not None and len(submissions) > 1:
        raise BadInput(f"--id names one job, but {len(submissions)} were given (ids must be unique)")
    return submissions


def _submission(where: str, text: str, options: argparse.Namespace) -> Submission:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{where}: not JSON: {error}") from None
    fields: dict[str, Any] = {"payload": value}
    if options.jobs:
        if not isinstance(value, dict):
            raise BadInput(f"{where}: --jobs expects a JSON object, got {type(value).__name__}")
        if unknown := sorted(set(value) - JOB_FIELDS):
            raise BadInput(f"{where}: unknown field(s) {', '.join(unknown)} "
                           f"(a job object has {', '.join(sorted(JOB_FIELDS))})")
        fields = value
    headers = fields.get("headers")
    if headers is not None and not (isinstance(headers, dict)
                                    and all(isinstance(v, str) for v in headers.values())):
        raise BadInput(f"{where}: headers must be an object of strings")
    try:
        job = encode_job(fields.get("payload"), fields.get("type", options.type),
                         fields.get("key", options.key), fields.get("id", options.id),
                         delay=options.delay, at=_time(options.at))
        job.to_bytes()
    except (InvalidJob, TypeError) as error:
        raise BadInput(f"{where}: {error}") from None
    return Submission(where, job, headers)


def _time(text: str | None) -> datetime | None:
    """--at's RFC 3339 time (InvalidJob if it is not one; a time without its zone is refused
    by encode_job)."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidJob(f"--at must be an RFC 3339 time such as 2030-01-01T09:00:00Z, "
                         f"got {text!r}") from None


def submit(submissions: Sequence[Submission], client: JobClient) -> list[Submission]:
    """Send every job, wait for every report; the ones that failed."""
    for submission in submissions:
        client.send(submission.job, submission.headers, submission.delivered)
    client.flush()
    for submission in submissions:  # flush() served every report; this is for certainty
        submission.reported.wait()
    return [submission for submission in submissions if submission.error is not None]


def result_line(submission: Submission, as_json: bool) -> str:
    if as_json:
        return json.dumps({"id": submission.job.id, "partition": submission.partition,
                           "offset": submission.offset})
    return submission.job.id


def run(argv: Sequence[str], stdin: TextIO, stdout: TextIO, stderr: TextIO) -> ExitCode:
    options = parser().parse_args(argv)
    try:
        settings = client_settings()
        configure_logging("producer", settings.log_level, settings.log_format, stderr)
        submissions = read_inputs(options, stdin)
        with JobClient(settings) as client:
            failed = submit(submissions, client)
    except BadInput as error:
        print(f"{NAME}: bad input: {error}", file=stderr)
        return ExitCode.CONFIG
    except ConfigError as error:
        print(f"{NAME}: configuration error: {error}", file=stderr)
        return ExitCode.CONFIG
    except ServiceError as error:
        print(f"{NAME}: {error}", file=stderr)
        return exit_code_for(error)
    for submission in submissions:
        if submission.error is None:
            print(result_line(submission, options.json), file=stdout)
    for submission in failed:
        print(f"{NAME}: {submission.where}: job {submission.job.id} was not acknowledged: "
              f"{submission.error}", file=stderr)
    return ExitCode.FAILURE if failed else ExitCode.OK


def main(argv: Sequence[str]) -> NoReturn:
    try:
        code = run(argv, sys.stdin, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted; jobs not yet acknowledged may or may not be delivered", file=sys.stderr)
        code = ExitCode.FAILURE
    sys.exit(code)

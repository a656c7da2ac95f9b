"""The JSON Schema of a job on the wire, generated from the Job model (jobpipe.job).

Why it exists: producers written in other languages (or kcat) conform to the checked-in file
shared/jobpipe/job.schema.json, and a unit test fails when it and the model disagree. The
schema is msgspec's for the model, with what the model cannot say about the wire: a
message may carry fields the contract does not name (kept in `job.extra`, so
`additionalProperties` is allowed), and the descriptions are of the wire, not of the class.

    python -m jobpipe.job_schema            # prints the schema
    python -m jobpipe.job_schema --write    # rewrites the checked-in file
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from jobpipe.job import Job

SCHEMA_FILE = Path(__file__).with_name("job.schema.json")

DESCRIPTIONS = {
    "id": "Unique id of the job (the client makes one, or the caller gives one to resubmit idempotently).",
    "type": "Which handler of the consumer's registry runs the job; absent: the default handler.",
    "key": "The Kafka message key and the ordering unit; absent: the message has no key.",
    "producer": "The demo producer's worker number (only the demo producer sets it).",
    "seq": "The demo producer's sequence number within its worker (only the demo producer sets it).",
    "created_at": "When the job was made: RFC 3339 with a time zone, e.g. 2026-01-01T12:00:00Z.",
    "payload": "The job's input: any JSON value; absent is the same as null.",
}


def job_schema() -> dict[str, Any]:
    """The schema of one job message (a JSON object, UTF-8)."""
    generated = msgspec.json.schema(Job)
    job = generated["$defs"]["Job"]
    job.pop("additionalProperties", None)  # unknown fields are kept, not refused
    job["description"] = ("One job of the jobpipe job pipeline: the value of a message on the jobs "
                          "topic. Fields not named here are allowed and passed on to the handler "
                          "(job.extra).")
    for name, text in DESCRIPTIONS.items():
        job["properties"][name]["description"] = text
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://jobpipe.invalid/job.schema.json", **generated}


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2) + "\n"


def main(argv: list[str]) -> None:
    if argv == ["--write"]:
        SCHEMA_FILE.write_text(schema_text())
        print(f"wrote {SCHEMA_FILE}")
    else:
        sys.stdout.write(schema_text())


if __name__ == "__main__":
    main(sys.argv[1:])

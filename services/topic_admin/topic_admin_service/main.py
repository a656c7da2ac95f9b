"""Entry point of the `topic-admin` console script.

    topic-admin [ensure]          create missing topics, grow partitions, never delete (default)
    topic-admin wait              only wait for the broker (exit 3 if it never answers)
    topic-admin reset             delete and re-create the topics (loses their jobs)
    topic-admin describe [--json] topics, partitions, offsets, the group's lag and members

Results go to stdout; logs go to stderr so `describe --json` output stays pure JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter

from confluent_kafka.admin import AdminClient
from tabulate import tabulate

from jobpipe.errors import ExitCode
from jobpipe.kafka_clients import admin_config, wait_for_broker
from jobpipe.service import Body, Outcome, Probes, run_service
from topic_admin_service.settings import TopicAdminSettings
from topic_admin_service.topics import Description, TopicAdmin

COMMANDS = ("ensure", "wait", "reset", "describe")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="topic-admin", description="Manage the job pipeline's Kafka topics. "
        "Configuration comes from environment variables (see README).")
    parser.add_argument("command", nargs="?", default="ensure", choices=COMMANDS,
                        help="what to do (default: ensure)")
    parser.add_argument("--json", action="store_true", help="describe: print JSON instead of a table")
    return parser.parse_args(argv)


def render_table(description: Description) -> str:
    rows = [[topic.name, p.partition, p.leader, ",".join(map(str, p.replicas)), ",".join(map(str, p.isr)),
             p.start_offset, p.end_offset, "-" if p.committed is None else p.committed,
             "-" if p.lag is None else p.lag]
            for topic in description.topics for p in topic.partitions]
    text = [tabulate(rows, headers=["topic", "partition", "leader", "replicas", "isr", "start", "end",
                                    "committed", "lag"], tablefmt="simple")]
    text.append(f"\ngroup {description.group}: total lag {description.total_lag}, "
                f"{len(description.members)} member(s)")
    if description.members:
        text.append(tabulate([[m["client_id"], m["host"], ",".join(map(str, m["partitions"])) or "-"]
                              for m in description.members],
                             headers=["member", "host", "partitions"], tablefmt="simple"))
    if description.missing:
        text.append(f"missing topics: {', '.join(description.missing)} (run `topic-admin ensure`)")
    return "\n".join(text)


def administer(args: argparse.Namespace) -> Body[TopicAdminSettings]:
    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        if args.command == "wait":
            return Outcome()
        admin = TopicAdmin(AdminClient(admin_config(settings, "topic-admin")), settings)
        if args.command == "describe":
            description = admin.describe()
            print(json.dumps(description.as_dict(), indent=2) if args.json else render_table(description))
            return Outcome(ExitCode.OK, {"total_lag": description.total_lag})
        actions = admin.reset() if args.command == "reset" else admin.ensure()
        return Outcome(ExitCode.OK, dict(Counter(actions.values())))

    return body


def main() -> None:
    args = parse_args()
    run_service("topic-admin", TopicAdminSettings, administer(args), serve_probes=False,
                log_stream=sys.stderr)

"""The yardstick for the inmemory service: a bare queue.Queue producer/consumer loop.

`python -m tests.benchmarks.queue_baseline JOBS PRODUCERS CONSUMERS CAPACITY` runs PRODUCERS
threads putting small job dicts (key and sequence number) on a queue.Queue of CAPACITY, and
CONSUMERS threads taking them and calling a no-op handler, until JOBS are done; it prints
`{"processed": n, "seconds": s}` timed from the first put to the last job handled. This is the
least a hand-rolled Python pipeline would do; the service adds the Job model, retries,
metrics and logging on top.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time


def handler(job: dict[str, object]) -> None:
    """The no-op handler."""


def main() -> None:
    jobs, producers, consumers, capacity = (int(arg) for arg in sys.argv[1:5])
    work: queue.Queue[dict[str, object] | None] = queue.Queue(maxsize=capacity)
    done = [0] * consumers
    start = threading.Barrier(producers + consumers + 1)

    def produce(number: int) -> None:
        start.wait()
        for seq in range(jobs // producers):
            work.put({"key": f"p{number}-m{seq}", "seq": seq})

    def consume(index: int) -> None:
        start.wait()
        while (job := work.get()) is not None:
            handler(job)
            done[index] += 1

    threads = ([threading.Thread(target=produce, args=(n + 1,)) for n in range(producers)]
               + [threading.Thread(target=consume, args=(n,)) for n in range(consumers)])
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads[:producers]:
        thread.join()
    for _ in range(consumers):
        work.put(None)
    for thread in threads[producers:]:
        thread.join()
    print(json.dumps({"processed": sum(done), "seconds": time.perf_counter() - began}))


if __name__ == "__main__":
    main()

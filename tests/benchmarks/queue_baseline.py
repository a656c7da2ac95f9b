"""The yardstick for the inmemory service: a bare queue.Queue producer/consumer loop.

`python -m tests.benchmarks.queue_baseline JOBS PRODUCERS CONSUMERS CAPACITY` runs PRODUCERS
threads putting the same jobs (`Job.new`, the product's job model) on a queue.Queue of
CAPACITY, and CONSUMERS threads taking them and calling the same no-op handler, until JOBS
are done; it prints `{"processed": n, "seconds": s}` timed from the first put to the last job
handled. What the service adds on top is what is measured: retries, metrics, logging,
graceful stop. (Making a Job is about 10 us here, more than a put and a get together.)
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time

from jobpipe.job import Job
from tests.handlers import noop


def main() -> None:
    jobs, producers, consumers, capacity = (int(arg) for arg in sys.argv[1:5])
    work: queue.Queue[Job | None] = queue.Queue(maxsize=capacity)
    done = [0] * consumers
    start = threading.Barrier(producers + consumers + 1)

    def produce(number: int) -> None:
        start.wait()
        for seq in range(jobs // producers):
            work.put(Job.new(number, seq))

    def consume(index: int) -> None:
        start.wait()
        while (job := work.get()) is not None:
            noop(job)
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

"""Events: worker processes call back to the host while they run.

``executor.on(event, callback)`` binds a callback to a named event and returns a context; a
task calls ``ctx.fire(...)`` and the host runs ``callback(...)`` in the executor's dispatcher
thread. Every event a task fired has been dispatched before ``gather`` returns its result.

Run: ``python examples/events_callback.py``
"""

import threading

from mepa import ProcessExecutor

found = []
lock = threading.Lock()


def on_prime(worker_pid, prime):
    # Runs on the host, in the dispatcher thread.
    with lock:
        found.append(prime)


def search(lo, hi, ctx):
    """Runs in a worker process: report each prime as it is found."""
    import os

    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            ctx.fire(os.getpid(), n)
            count += 1
    return count


def main():
    with ProcessExecutor(2) as executor:
        ctx = executor.on("prime", on_prime)
        futures = [executor.submit(search, lo, lo + 50, ctx) for lo in range(0, 200, 50)]
        counts = executor.gather(futures)
    print(f"primes below 200 per range: {counts}, reported by events: {len(found)}")
    print("largest:", max(found))
    assert sum(counts) == len(found) == 46
    assert sorted(found)[:5] == [2, 3, 5, 7, 11]
    print("events callback: ok")


if __name__ == "__main__":
    main()

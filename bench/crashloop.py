"""SIGKILL-and-restart loop against one worker under load, until a restart exits on its own.

    python -m bench.crashloop                          # 40 restarts, 5-25 s apart, restart at once
    python -m bench.crashloop --gap 0,6 --restarts 60  # kill during startup and recovery too
    python -m bench.crashloop --down 0,2               # wait 0-2 s after the kill first

A focused reproducer for what ``bench.chaos`` saw twice in one run: a worker restarted
right after a SIGKILL exited with code 1 about 5 s later. It starts its own broker and
Redis on free ports (kept in the printed work dir), creates the topics, produces the
chaos workload (:mod:`bench.chaos_workload`) at ``--rate`` records/s, starts one worker,
and loops: wait ``--gap`` seconds (random), SIGKILL the worker's process group, wait
``--down`` seconds, restart it. A worker that exits without being killed within 60 s of
its start is reported with the ERROR/CRITICAL lines and tracebacks of that start
(:func:`bench.chaos_faults.incarnation_report`); its log is copied next to the work dir.
Exit code 1 when it reproduced, 0 when every restart survived.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import time

from bench.chaos import SteadyProducer, chaos_settings
from bench.chaos_faults import ChaosWorker, incarnation_report
from bench.chaos_workload import generate
from bench.stack import bench_stack, terminate_as_interrupt
from processors.topics import ensure_topics

log = logging.getLogger("bench.crashloop")

#: A worker that exits on its own this soon after its start is the failure looked for.
EARLY_EXIT_SECONDS = 60.0


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.crashloop", description=__doc__)
    parser.add_argument("--restarts", type=int, default=40)
    parser.add_argument("--gap", type=_range, default=(5.0, 25.0), help="s before a kill: lo,hi")
    parser.add_argument("--down", type=_range, default=(0.0, 0.0), help="s before a restart")
    parser.add_argument("--rate", type=float, default=100.0, help="records per second")
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a crash")
    return parser.parse_args(argv)


def watch(worker: ChaosWorker, seconds: float) -> int | None:
    """Sleep ``seconds`` while watching the worker; its exit code if it exited meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not worker.alive():
            proc = worker.child.proc if worker.child is not None else None
            return proc.returncode if proc is not None and proc.returncode is not None else -1
        time.sleep(0.1)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    terminate_as_interrupt()
    rng = random.Random(f"crashloop-{args.seed}")
    crashes = 0
    with bench_stack(keep_workdir=True) as stack:
        log.info("work dir %s", stack.workdir)
        settings = chaos_settings(stack.bootstrap, stack.redis_url, stack.workdir, args.partitions)
        ensure_topics(settings)
        worker = ChaosWorker("worker-1", settings, stack.workdir / "worker-1.log")
        producer: SteadyProducer | None = None
        try:
            started = worker.start()
            if worker.wait_ready(240) is None:
                log.error("the first start never became ready:\n%s", worker.log_path.read_text())
                return 2
            duration = (args.restarts + 2) * args.gap[1] + 120
            workload = generate(
                int(duration * args.rate * 0.95),
                args.customers,
                args.seed,
                time.time() + 1.0,
                args.rate,
            )
            producer = SteadyProducer(settings, workload)
            producer.start()
            for restart in range(1, args.restarts + 1):
                code = watch(worker, rng.uniform(*args.gap))
                lived = time.monotonic() - started
                if code is not None:
                    crashes += lived <= EARLY_EXIT_SECONDS
                    report = incarnation_report(worker.log_path, worker.starts)
                    saved = stack.workdir.with_name(
                        f"{stack.workdir.name}-crash-start{worker.starts}.log"
                    )
                    shutil.copyfile(worker.log_path, saved)
                    log.error(
                        "%s: start #%d exited on its own (code %s) %.1f s after it "
                        "started; log copied to %s\n%s",
                        "REPRODUCED" if lived <= EARLY_EXIT_SECONDS else "EXITED LATE",
                        worker.starts,
                        code,
                        lived,
                        saved,
                        report,
                    )
                    if not args.keep_going:
                        return 1
                else:
                    log.info("restart %d: SIGKILL start #%d", restart, worker.starts)
                    worker.kill()
                time.sleep(rng.uniform(*args.down))
                started = worker.start()
            code = watch(worker, 30.0)
            if code is not None:
                crashes += 1
                log.error(
                    "the last start exited on its own (code %s):\n%s",
                    code,
                    incarnation_report(worker.log_path, worker.starts),
                )
            log.info("%d starts, %d exited on their own", worker.starts, crashes)
            return 1 if crashes else 0
        finally:
            if producer is not None:
                producer.stop()
            worker.kill()


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark: ``make bench`` (``python -m bench.run``) prints figures, asserts nothing.

It starts its own Kafka broker and Redis (``devstack``), preloads a workload into
the touchpoint topics, and measures three consumers of the same backlog:

- ``a`` ceiling: a confluent-kafka loop that only decodes and forwards (no state);
- ``b`` hand-written: the same domain work as the worker (validation, ``step``,
  RocksDB state, triggers, decisions, Redis) without Faust;
- ``c`` worker: ``python -m processors worker`` as shipped.

Then event-to-trigger latency under a fixed open-loop rate. Results go to
``bench/results/latest.{json,md}``.
"""

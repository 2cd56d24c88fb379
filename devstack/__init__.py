"""Local dev stack: a real Kafka broker and Redis without Docker.

``python -m devstack up|down|status|kafka-jars`` backs ``make up``/``make down``;
:mod:`devstack.provision` gives the test suite Kafka and Redis.
"""

from devstack.errors import DevstackError

__all__ = ["DevstackError"]

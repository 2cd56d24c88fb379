"""The worker install's tools: the ``omni`` CLI (publishing, dead letters, the Redis read
model, offer statistics, the simulator) and ``make demo``.

Publishing itself is the contract package's (:mod:`producers`); what reads the
pipeline's outputs or state (dead letters, ``omni redis rebuild``, ``omni stats``) and
the demo, which starts the stack, need the worker's settings and code, so they live here.
"""

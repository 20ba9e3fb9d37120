"""The kernel: `Queue` and the worker threads it owns (see ARCHITECTURE.md).

| module | holds |
|---|---|
| `queue.py` | `Queue` and `connect`: options, lifecycle, failure, the registry of channels |
| `context.py` | `Context`: what a worker gets from its queue (never the `Queue` itself) |
| `emitter.py` | the emitter thread: batch, encode, send, retry, dead-letter |
| `routes.py` | receivers, and the routing table with the in-flight count and the demand |
| `consumer.py` | the consumer thread: receive (or hold, or idle), route into `rcv`, settle |
| `listener.py` | the receive side's face: starts the consumer, opens and closes categories |
| `stats.py` | the counters, `Stats` and `observe` |

Users import from `qchan`; these modules are the implementation.
"""

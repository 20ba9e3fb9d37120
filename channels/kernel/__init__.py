"""The kernel: `Queue` and the worker threads it owns (see ARCHITECTURE.md).

| module | holds |
|---|---|
| `queue.py` | `Queue` and `connect`: options, lifecycle, failure, the registry of channels |
| `context.py` | `Context`: what a worker gets from its queue (never the `Queue` itself) |
| `emitter.py` | the emitter thread: batch, encode, send, retry, dead-letter |
| `routes.py` | receivers, the routing table with the in-flight count, the poller's handoffs |
| `poller.py` | the poller thread: receive (or hold, or idle), decode, route |
| `dispatcher.py` | the dispatcher thread: hand to `rcv`, take acks, settle, time out, release |
| `listener.py` | the receive side's face: starts the poller and the dispatcher, opens categories |
| `stats.py` | the counters, `Stats` and `observe` |

Users import from `qchan`; these modules are the implementation.
"""

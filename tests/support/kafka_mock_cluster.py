"""A Kafka-protocol broker for the tests: librdkafka's built-in mock cluster, in its own process.

Nothing on this machine ships Apache Kafka, but librdkafka (inside
confluent-kafka) contains a mock cluster that speaks the Kafka protocol:
producing, fetching, consumer groups (classic and KIP-848), offset commits
with metadata. It lives as long as the client handle that created it, so this
process creates one and serves until stdin closes or it is terminated.

    python tests/kafka_mock_cluster.py [--brokers 3]

The first line on stdout is the bootstrap list (`127.0.0.1:p1,127.0.0.1:p2,...`).
Then each line on stdin is a command, answered by one line (`ok` or `error ...`):

    down <broker id>               stop a broker (connections refused) to test failures
    up <broker id>                 start it again
    create <topic> <partitions>    create a topic (the mock has no CreateTopics API)
    ping                           answers ok when the commands work

The commands need librdkafka's mock C API (rd_kafka_mock_*), reached through
ctypes on the librdkafka that confluent-kafka loads; the handle is created
with `test.mock.num.brokers`, exactly what `Producer({"test.mock.num.brokers":
3})` does. When the C API cannot be found (confluent-kafka built against
another librdkafka) the launcher falls back to that Producer and answers
`error unsupported` to the commands.

Measured behaviour of the mock worth knowing: metadata requests that allow
auto-creation create topics with 4 partitions; the Admin API's create_topics
times out (no controller); a classic-protocol group waits 3 s before its first
assignment, and a new member of a group whose previous member closed waits for
that member's session timeout; `group.protocol=consumer` assigns in ~0.1 s.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import signal
import sys
from typing import Any


class _MockApi:
    """librdkafka's mock cluster C API through ctypes."""

    def __init__(self, brokers: int) -> None:
        import confluent_kafka

        site = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
        paths = glob.glob(os.path.join(site, "confluent_kafka.libs", "librdkafka*.so*"))
        lib = ctypes.CDLL(paths[0] if paths else "librdkafka.so.1")
        vp, i32, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p
        self._sig(lib.rd_kafka_conf_new, [], vp)
        self._sig(lib.rd_kafka_conf_set, [vp, cp, cp, cp, ctypes.c_size_t], ctypes.c_int)
        self._sig(lib.rd_kafka_new, [ctypes.c_int, vp, cp, ctypes.c_size_t], vp)
        self._sig(lib.rd_kafka_handle_mock_cluster, [vp], vp)
        self._sig(lib.rd_kafka_mock_cluster_bootstraps, [vp], cp)
        self._sig(lib.rd_kafka_mock_broker_set_down, [vp, i32], ctypes.c_int)
        self._sig(lib.rd_kafka_mock_broker_set_up, [vp, i32], ctypes.c_int)
        self._sig(
            lib.rd_kafka_mock_topic_create, [vp, cp, ctypes.c_int, ctypes.c_int], ctypes.c_int
        )
        self._sig(lib.rd_kafka_err2str, [ctypes.c_int], cp)
        self.lib = lib
        conf = lib.rd_kafka_conf_new()
        err = ctypes.create_string_buffer(512)
        for name, value in (("test.mock.num.brokers", str(brokers)), ("log_level", "4")):
            if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), err, 512) != 0:
                raise RuntimeError(err.value.decode())
        self.rk = lib.rd_kafka_new(0, conf, err, 512)  # 0: RD_KAFKA_PRODUCER
        if not self.rk:
            raise RuntimeError(err.value.decode())
        self.cluster = lib.rd_kafka_handle_mock_cluster(self.rk)
        if not self.cluster:
            raise RuntimeError("librdkafka made no mock cluster")

    @staticmethod
    def _sig(fn: Any, args: list[Any], res: Any) -> None:
        fn.argtypes = args
        fn.restype = res

    def bootstraps(self) -> str:
        return str(self.lib.rd_kafka_mock_cluster_bootstraps(self.cluster).decode())

    def command(self, cmd: str, args: list[str]) -> str:
        lib = self.lib
        if cmd == "ping":
            return "ok"
        if cmd == "down":
            rc = lib.rd_kafka_mock_broker_set_down(self.cluster, int(args[0]))
        elif cmd == "up":
            rc = lib.rd_kafka_mock_broker_set_up(self.cluster, int(args[0]))
        elif cmd == "create":
            rc = lib.rd_kafka_mock_topic_create(self.cluster, args[0].encode(), int(args[1]), 1)
        else:
            return f"error unknown command {cmd!r}"
        return "ok" if rc == 0 else f"error {lib.rd_kafka_err2str(rc).decode()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api: _MockApi | None
    keep: Any
    try:
        api = _MockApi(args.brokers)
        bootstrap, keep = api.bootstraps(), api
    except (OSError, AttributeError, RuntimeError, IndexError) as e:
        print(f"mock C API unavailable ({e}); plain Producer mock, no commands", file=sys.stderr)
        import confluent_kafka

        api = None
        keep = confluent_kafka.Producer({"test.mock.num.brokers": args.brokers})
        brokers = keep.list_topics(timeout=10).brokers.values()
        bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
    print(bootstrap, flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split() or [""]
        if api is None:
            answer = "error unsupported"
        else:
            try:
                answer = api.command(cmd, rest)
            except (ValueError, IndexError) as e:
                answer = f"error {e}"
        print(answer, flush=True)
    del keep


if __name__ == "__main__":
    main()

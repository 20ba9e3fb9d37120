"""librdkafka's mock cluster for the reliability scenarios: tests/support/kafka_mock_cluster.py plus
`rtt <broker id> <ms>` (added round-trip time), `alldown` / `allup`, and
`session <timeout ms> <heartbeat ms>` (the KIP-848 group session, broker side).

    python tests/reliability/kafka_mock.py [--brokers 1]

Why not the TCP proxy: a Kafka client bootstraps through one address and then
connects to the brokers the metadata names, so a proxy in front of the
bootstrap address sees only the first request. The mock cluster can do the
same faults from the inside: a broker that is down closes its connections
and refuses new ones (a cut), and `rtt` delays each response (latency).
Same protocol as the base launcher: first line the bootstrap list, then one
answer line (`ok` / `error ...`) per command line on stdin.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/

from support.kafka_mock_cluster import _MockApi


class MockApi(_MockApi):
    def __init__(self, brokers: int) -> None:
        super().__init__(brokers)
        self.brokers = brokers
        self._sig(
            self.lib.rd_kafka_mock_broker_set_rtt,
            [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int],
            ctypes.c_int,
        )
        self._sig(
            self.lib.rd_kafka_mock_set_group_consumer_session_timeout_ms,
            [ctypes.c_void_p, ctypes.c_int],
            None,
        )
        self._sig(
            self.lib.rd_kafka_mock_set_group_consumer_heartbeat_interval_ms,
            [ctypes.c_void_p, ctypes.c_int],
            None,
        )

    def command(self, cmd: str, args: list[str]) -> str:
        if cmd == "rtt":
            rc = self.lib.rd_kafka_mock_broker_set_rtt(self.cluster, int(args[0]), int(args[1]))
            return "ok" if rc == 0 else f"error {self.lib.rd_kafka_err2str(rc).decode()}"
        if cmd == "session":  # KIP-848 groups: session timeout and heartbeat interval (ms)
            self.lib.rd_kafka_mock_set_group_consumer_session_timeout_ms(self.cluster, int(args[0]))
            self.lib.rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(
                self.cluster, int(args[1])
            )
            return "ok"
        if cmd in ("alldown", "allup"):
            for b in range(1, self.brokers + 1):
                answer = super().command(cmd[3:], [str(b)])
                if answer != "ok":
                    return answer
            return "ok"
        return super().command(cmd, args)


def main() -> None:
    brokers = int(sys.argv[sys.argv.index("--brokers") + 1]) if "--brokers" in sys.argv else 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api = MockApi(brokers)
    print(api.bootstraps(), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split() or [""]
        try:
            answer = api.command(cmd, rest)
        except (ValueError, IndexError) as e:
            answer = f"error {e}"
        print(answer, flush=True)


if __name__ == "__main__":
    main()

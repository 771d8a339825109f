"""A consumer in its own process, forwarding `src` to `dst`, for the kill -9 test.

After each read it records the batch size under `<name>:held` and pauses before forwarding, so
the test can kill it while it holds entries it has read but not acknowledged.
"""

from __future__ import annotations

import sys
import time

from protocol.codec import encode_group
from protocol.queue import StreamConsumer, connect


def main(url: str, src: str, dst: str, group: str, name: str, hold_s: float) -> None:
    client = connect(url)
    consumer = StreamConsumer(client, src, group, name, claim_idle_ms=60_000)
    while True:
        entries = consumer.read(count=100, block_ms=200)
        if not entries:
            continue
        client.incrby(f"{name}:held", len(entries))
        time.sleep(hold_s)
        consumer.forward([e.id for e in entries], dst, [encode_group(e.group) for e in entries])
        client.incrby(f"{name}:forwarded", len(entries))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))

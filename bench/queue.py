"""Queue throughput: ringrl's protocol queue vs raw redis-py on the same bytes, same run.

Groups of 16 responses x 1,024 tokens (token ids + behaviour log-probs), produce -> consume -> ack.
ringrl's path includes encoding and decoding (typed groups in, typed groups out); the raw path
moves pre-encoded bytes with pipelined XADD, XREADGROUP and XACK+XDEL, and decodes nothing.
"""

from __future__ import annotations

import argparse
import json
import time

import redis
from rich.console import Console
from rich.table import Table

from bench.common import best_of, redis_server
from protocol.codec import decode_group, encode_group
from protocol.queue import StreamConsumer, StreamProducer, connect
from tests.protocol.strategies import make_group

BATCH = 64


def ringrl_round(client: redis.Redis, groups: list, stream: str) -> None:
    producer = StreamProducer(client, stream, max_len=len(groups) + BATCH)
    consumer = StreamConsumer(client, stream, "bench", "c", reclaim_every_s=3600)
    for i in range(0, len(groups), BATCH):
        producer.produce(groups[i:i + BATCH])
    done = 0
    while done < len(groups):
        entries = consumer.read(count=BATCH, block_ms=1000)
        done += consumer.ack([e.id for e in entries])


def raw_round(client: redis.Redis, payloads: list[bytes], stream: str) -> None:
    try:
        client.xgroup_create(stream, "bench", id="0", mkstream=True)
    except redis.ResponseError:
        pass
    for i in range(0, len(payloads), BATCH):
        pipe = client.pipeline(transaction=False)
        for p in payloads[i:i + BATCH]:
            pipe.xadd(stream, {b"d": p})
        pipe.execute()
    done = 0
    while done < len(payloads):
        resp = client.xreadgroup("bench", "c", {stream: ">"}, count=BATCH, block=1000)
        ids = [eid for _, rows in resp for eid, _ in rows]
        pipe = client.pipeline(transaction=True)
        pipe.xack(stream, "bench", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        done += len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groups", type=int, default=512, help="groups per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per path; best is reported")
    args = ap.parse_args()
    groups = [make_group(n=16, length=1024, seed=i) for i in range(args.groups)]
    payloads = [encode_group(g) for g in groups]
    mb = sum(len(p) for p in payloads) / 1e6
    console = Console()
    with redis_server() as url:
        client = connect(url)
        counter = iter(range(10**6))

        def fresh(prefix: str) -> str:
            client.flushdb()
            return f"{prefix}{next(counter)}"

        t_ringrl = best_of(args.repeats, lambda: ringrl_round(client, groups, fresh("r")))
        t_raw = best_of(args.repeats, lambda: raw_round(client, payloads, fresh("w")))

    sample = groups[:64]
    t_enc = best_of(5, lambda: [encode_group(g) for g in sample]) / len(sample)
    blobs = [encode_group(g) for g in sample]
    t_dec = best_of(5, lambda: [decode_group(b) for b in blobs]) / len(sample)
    dumped = [json.dumps(g.model_dump(mode="json")) for g in sample]
    t_jenc = best_of(3, lambda: [json.dumps(g.model_dump(mode="json")) for g in sample]) / len(sample)
    t_jdec = best_of(3, lambda: [type(g).model_validate(json.loads(s)) for g, s in zip(sample, dumped)]) / len(sample)

    table = Table(title=f"queue: {args.groups} groups x 16 responses x 1,024 tokens ({mb:.0f} MB), "
                        "produce -> consume -> ack, best of {args.repeats}".replace("{args.repeats}", str(args.repeats)))
    for col in ("path", "groups/s", "MB/s", "ratio vs raw"):
        table.add_column(col, justify="right")
    table.add_row("raw redis-py (pipelined, bytes only)", f"{args.groups / t_raw:,.0f}", f"{mb / t_raw:,.0f}", "1.00")
    table.add_row("ringrl queue (typed groups, codec incl.)", f"{args.groups / t_ringrl:,.0f}",
                  f"{mb / t_ringrl:,.0f}", f"{t_raw / t_ringrl:.2f}")
    console.print(table)

    codec = Table(title="codec, per group (16 x 1,024 tokens)")
    for col in ("codec", "encode µs", "decode µs", "bytes", "speed-up vs JSON (enc+dec)"):
        codec.add_column(col, justify="right")
    codec.add_row("JSON (pydantic dump + json)", f"{t_jenc * 1e6:,.0f}", f"{t_jdec * 1e6:,.0f}",
                  f"{len(dumped[0]):,}", "1.0")
    codec.add_row("ringrl msgpack (packed arrays)", f"{t_enc * 1e6:,.0f}", f"{t_dec * 1e6:,.0f}",
                  f"{len(blobs[0]):,}", f"{(t_jenc + t_jdec) / (t_enc + t_dec):.0f}")
    console.print(codec)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"bench/queue.py finished in {time.time() - start:.0f} s")

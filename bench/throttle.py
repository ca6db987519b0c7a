#!/usr/bin/env python3
"""A slow link in front of a registry, for bench/run.sh's `slow` phase.

    bench/throttle.py LISTEN_PORT UPSTREAM_HOST:PORT --delay-ms 20 --mbps 50

A TCP relay on 127.0.0.1:LISTEN_PORT. Every chunk the client sends (an
HTTP request's head, in practice) waits DELAY_MS before it is forwarded,
so each request pays one round trip; everything the registry sends back
shares one token bucket of MBPS megabytes per second, like one link that
all connections share. Stdlib only (asyncio), prints "ready" when
listening.
"""

import argparse
import asyncio
import time

CHUNK = 64 * 1024


class Link:
    """One token bucket for every connection's downstream bytes."""

    def __init__(self, bytes_per_s):
        self.rate = bytes_per_s
        self.next_free = time.monotonic()

    async def take(self, n):
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        if self.next_free > now:
            await asyncio.sleep(self.next_free - now)


async def pipe(reader, writer, delay=0.0, link=None):
    try:
        while data := await reader.read(CHUNK):
            if delay:
                await asyncio.sleep(delay)
            if link:
                await link.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("upstream")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--mbps", type=float, default=50)
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    link = Link(a.mbps * 1e6)

    async def serve(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, uw, delay=a.delay_ms / 1000), pipe(ur, cw, link=link))

    server = await asyncio.start_server(serve, "127.0.0.1", a.port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

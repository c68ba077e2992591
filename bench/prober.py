"""The client every failover figure is measured with: a new TLS connection to the endpoint every 10 ms (a fixed
rate, not a closed loop: a slow answer does not delay the next probe), verified against the cluster CA, asking
`GET /readyz` with a 200 ms timeout. One line per probe on stdout: `start end ok` (CLOCK_MONOTONIC seconds, the
same clock as the harness's time.monotonic()); `ok` is 1 for a 200, 5 for another HTTP answer (a kube-apiserver in
its shutdown delay answers /readyz 500 while it still serves every other request), 0 for a connection refused,
reset or closed without an answer, t for no answer within the timeout.

Run by bench/failover.py as its own process, so the harness's Incus calls never delay a probe:
    python bench/prober.py HOST PORT CA_FILE [--server-name NAME] [--every 0.01] [--timeout 0.2] [--resolve S:P]
With `--resolve SERVER:PORT`, HOST is a name, resolved (A records, over TCP) at that DNS server as a client that
honours the TTL does: the answer is kept for its TTL, then asked again; each probe takes the next address of the
answer in turn (the dns strategy seen by clients that resolve, not by one pinned to an address).
It stops on SIGTERM after writing what it has."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
import time


class Resolver:
    """HOST's A records at a DNS server, kept for their TTL; `next()` gives the answer's addresses in turn."""

    def __init__(self, name: str, server: str):
        self.name, (self.host, port) = name, server.rsplit(":", 1)
        self.port, self.addresses, self.expires, self.turn = int(port), [], 0.0, 0

    def next(self) -> str:
        import dns.message
        import dns.query

        now = time.monotonic()
        if now >= self.expires or not self.addresses:
            try:
                answer = dns.query.tcp(dns.message.make_query(self.name, "A"), self.host, port=self.port, timeout=1)
                rrsets = [r for r in answer.answer if r.rdtype == 1]
                self.addresses = sorted(rd.address for r in rrsets for rd in r)
                self.expires = now + (min(r.ttl for r in rrsets) if rrsets else 1)
            except Exception:  # noqa: BLE001 - a resolver that does not answer: keep the last answer a moment
                self.expires = now + 1
        if not self.addresses:
            return self.name
        self.turn += 1
        return self.addresses[self.turn % len(self.addresses)]


async def probe(host: str, port: int, ctx: ssl.SSLContext, server_name: str, timeout: float, out: list):
    start = time.monotonic()

    async def ask() -> str:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name)
        try:
            writer.write(f"GET /readyz HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
            return "1" if line.startswith(b"HTTP/1.1 200") else ("5" if line.startswith(b"HTTP/") else "0")
        finally:
            writer.close()

    try:
        result = await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        result = "t"
    except (OSError, ssl.SSLError, EOFError):
        result = "0"
    out.append(f"{start:.4f} {time.monotonic():.4f} {result}\n")


async def run(args) -> None:
    ctx = ssl.create_default_context(cafile=args.ca_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lines: list[str] = []
    tasks: set = set()
    next_at = time.monotonic()
    last_flush = next_at
    resolver = Resolver(args.host, args.resolve) if args.resolve else None
    while not stop.is_set():
        host = resolver.next() if resolver else args.host
        task = asyncio.create_task(probe(host, args.port, ctx, args.server_name or args.host, args.timeout,
                                         lines))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += args.every
        now = time.monotonic()
        if now - last_flush > 0.5:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
            lines.clear()
            last_flush = now
        await asyncio.sleep(max(0.0, next_at - now))
    await asyncio.gather(*tasks, return_exceptions=True)
    sys.stdout.write("".join(lines))
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("ca_file")
    ap.add_argument("--server-name", default="")
    ap.add_argument("--every", type=float, default=0.01)
    ap.add_argument("--timeout", type=float, default=0.2)
    ap.add_argument("--resolve", default="", help="SERVER:PORT: HOST is a name, resolved there for its TTL")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()

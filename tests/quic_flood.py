"""A handshake flood against the bridge's QUIC listener, with a real QUIC stack
(aioquic): connections that complete the TLS handshake, with a certificate the
cloud side accepts, and then say nothing, each holding a handshake slot until
the cloud side's handshake timeout.

    quic_flood.py HOST PORT CERT KEY CA FIRST THEN HOLD_S

Opens FIRST connections and waits until they are up, then THEN more while the
first are still silent, and keeps all of them open for HOLD_S seconds. Prints
JSON: how many completed their handshake in each wave, and the errors.
"""

import asyncio
import json
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

ALPN = "causeway-tunnel/1"


async def main(host, port, cert, key, ca, first, then, hold):
    def configuration():
        c = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost", idle_timeout=60)
        c.load_cert_chain(cert, key)
        c.load_verify_locations(ca)
        return c

    connected = {"first": 0, "then": 0}
    errors = []
    release = asyncio.Event()

    async def one(wave, up):
        try:
            async with connect(host, port, configuration=configuration(), wait_connected=True):
                connected[wave] += 1
                up.set()
                await release.wait()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(f"{wave}: {e!r}")
            up.set()

    async def wave(name, n):
        ups = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(one(name, up)) for up in ups]
        await asyncio.wait_for(asyncio.gather(*(u.wait() for u in ups)), 8)
        return tasks

    tasks = await wave("first", first)
    tasks += await wave("then", then)
    await asyncio.sleep(hold)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"connected": connected, "errors": errors}))


if __name__ == "__main__":
    h, p, cert, key, ca, first, then, hold = sys.argv[1:9]
    asyncio.run(main(h, int(p), cert, key, ca, int(first), int(then), float(hold)))

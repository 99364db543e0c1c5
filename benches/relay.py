"""A TCP relay that moves bytes and nothing else: the least work any proxy in
front of a broker can do. Each direction of each connection is one thread that
splices from one socket into a pipe and from the pipe into the other socket, so
the bytes never reach user space (no copy, no parsing, no Kafka).

`benches/load.py` runs it in front of a broker that advertises the relay's
address, as the ceiling for a proxy on the benchmark machine.

    python benches/relay.py LISTEN_PORT BROKER_PORT
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading

F_SETPIPE_SZ = 1031
CHUNK = 1 << 20


def pump(src: socket.socket, dst: socket.socket) -> None:
    r, w = os.pipe()
    try:
        # The largest pipe an unprivileged process may ask for (1 MiB by default).
        fcntl.fcntl(r, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass
    try:
        while True:
            n = os.splice(src.fileno(), w, CHUNK)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen_port, broker_port = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(128)
    while True:
        client, _ = listener.accept()
        try:
            broker = socket.create_connection(("127.0.0.1", broker_port))
        except OSError:
            client.close()
            continue
        for s in (client, broker):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, broker), daemon=True).start()
        threading.Thread(target=pump, args=(broker, client), daemon=True).start()


if __name__ == "__main__":
    main()

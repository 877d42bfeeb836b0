#!/usr/bin/env python3
"""Send a fixed number of HTTP/1.1 GET requests over a fixed number of connections.

    python3 scripts/fixed_load.py --port 8080 --requests 20000 --conns 64 --mode keepalive
    python3 scripts/fixed_load.py --port 8080 --requests 20000 --conns 64 --mode pipeline --depth 16
    python3 scripts/fixed_load.py --port 8080 --requests 5000 --conns 64 --mode close

Modes (all single-threaded, non-blocking sockets and one selector):
  keepalive  --conns persistent connections; each sends one request, reads its
             response, sends the next.
  pipeline   like keepalive, but every write carries --depth requests and the
             connection waits for all --depth responses before the next write.
  close      --conns connections in flight; each carries one request with
             "Connection: close", reads the response to EOF, closes, and is
             replaced by a new connection while requests remain.

Every response must be "HTTP/1.1 200" with a Content-Length (the client checks
each one). Unlike wrk, which runs for a fixed time, this sends exactly
--requests requests, so a server's syscall count (strace -c) can be divided by a
known number. Prints one line, "requests=N errors=E seconds=S", to stdout and
exits non-zero on any error.

Used by scripts/bench.sh for the syscalls-per-request measurement.
"""

import argparse
import errno
import selectors
import socket
import sys
import time


class Failed(Exception):
    pass


def parse_responses(buf, close_mode):
    """Consume complete responses from buf (a bytearray). Returns the count."""
    n = 0
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return n
        head = bytes(buf[:end])
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise Failed(f"unexpected status line {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and b"close" in value.lower() and not close_mode:
                raise Failed("server answered with Connection: close")
        if length is None:
            raise Failed("response without Content-Length")
        total = end + 4 + length
        if len(buf) < total:
            return n
        del buf[:total]
        n += 1


class Conn:
    __slots__ = ("sock", "buf", "out", "want", "got")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.out = b""       # bytes still to write
        self.want = 0        # responses expected for the batch in flight
        self.got = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/plaintext")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--mode", choices=("keepalive", "pipeline", "close"), default="keepalive")
    ap.add_argument("--depth", type=int, default=16, help="requests per write (pipeline)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = ap.parse_args()

    close_mode = args.mode == "close"
    depth = args.depth if args.mode == "pipeline" else 1
    host_hdr = f"{args.host}:{args.port}"
    req = f"GET {args.path} HTTP/1.1\r\nHost: {host_hdr}\r\n".encode()
    req += b"Connection: close\r\n\r\n" if close_mode else b"\r\n"

    sel = selectors.DefaultSelector()
    issued = 0        # requests written (or queued to write)
    done = 0          # responses received
    live = 0

    def start_batch(c):
        nonlocal issued
        n = min(depth, args.requests - issued)
        issued += n
        c.want, c.got = n, 0
        c.out = req * n

    def open_conn():
        nonlocal live
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        err = s.connect_ex((args.host, args.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise Failed(f"connect: {errno.errorcode.get(err, err)}")
        c = Conn(s)
        start_batch(c)
        sel.register(s, selectors.EVENT_WRITE, c)
        live += 1

    def finish(c):
        nonlocal live
        sel.unregister(c.sock)
        c.sock.close()
        live -= 1

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    try:
        for _ in range(min(args.conns, -(-args.requests // depth))):
            open_conn()
        while live:
            if time.monotonic() > deadline:
                raise Failed(f"timed out after {args.timeout}s ({done}/{args.requests} responses)")
            for key, ev in sel.select(timeout=1.0):
                c = key.data
                if ev & selectors.EVENT_WRITE and c.out:
                    try:
                        sent = c.sock.send(c.out)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as e:
                        raise Failed(f"send: {e}") from e
                    c.out = c.out[sent:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                if not ev & selectors.EVENT_READ:
                    continue
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise Failed(f"recv: {e}") from e
                if data:
                    c.buf += data
                    n = parse_responses(c.buf, close_mode)
                    c.got += n
                    done += n
                    if c.got > c.want:
                        raise Failed("more responses than requests")
                    if c.got == c.want and not close_mode:
                        if c.buf:
                            raise Failed("bytes after the last response")
                        if issued < args.requests:
                            start_batch(c)
                            sel.modify(c.sock, selectors.EVENT_WRITE, c)
                        else:
                            finish(c)
                    continue
                # EOF
                if not close_mode or c.got != c.want or c.buf:
                    raise Failed(f"connection closed early ({c.got}/{c.want} responses)")
                finish(c)
                if issued < args.requests:
                    open_conn()
    except Failed as e:
        print(f"requests={done} errors=1 seconds={time.monotonic() - t0:.3f}")
        sys.exit(f"fixed_load: {e}")
    print(f"requests={done} errors=0 seconds={time.monotonic() - t0:.3f}")


if __name__ == "__main__":
    main()

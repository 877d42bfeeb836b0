#!/usr/bin/env python3
"""Open N idle keep-alive HTTP/1.1 connections and hold them.

Each connection sends one `GET <path>` and reads the whole response, so the
server has accepted it, served a request on it and parked it as an idle
keep-alive connection. Then the script prints "ready" and holds every socket
until stdin reaches EOF (or --hold seconds pass, when stdin is not usable).

    python3 scripts/idle_conns.py --port 8080 --count 10000

Used by scripts/bench.sh to measure server RSS per idle connection.
"""

import argparse
import os
import resource
import socket
import stat
import sys
import time


def read_response(sock, buf_size=4096):
    """Read one HTTP/1.1 response that carries a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(buf_size)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status line {status!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"connection" and b"close" in value.lower():
            raise ConnectionError("server answered with Connection: close")
    if length is None:
        raise ConnectionError("response without Content-Length")
    while len(body) < length:
        chunk = sock.recv(buf_size)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        body += chunk
    if len(body) != length:
        raise ConnectionError("more bytes than the response (unexpected)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--path", default="/plaintext")
    ap.add_argument("--hold", type=float, default=600.0,
                    help="seconds to hold when stdin is not a pipe/tty")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < args.count + 16:
        sys.exit(f"RLIMIT_NOFILE {soft} is too low for {args.count} connections")

    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n"
               ).encode()
    socks = []
    start = time.monotonic()
    try:
        for i in range(args.count):
            s = socket.create_connection((args.host, args.port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            read_response(s)
            socks.append(s)
    except Exception as e:  # report how far we got, then fail
        sys.exit(f"idle_conns: connection {len(socks) + 1}/{args.count} failed: {e!r}")
    elapsed = time.monotonic() - start
    print(f"idle_conns: {len(socks)} connections open and used in {elapsed:.2f}s",
          file=sys.stderr)
    print("ready", flush=True)

    # Hold until stdin closes (the bench script closes our stdin to release
    # us); with stdin not a pipe or terminal (e.g. /dev/null), sleep --hold.
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
        waitable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):
        waitable = False
    if waitable:
        sys.stdin.read()
    else:
        time.sleep(args.hold)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Split a `perf record -g` profile of a server into buckets by syscall.

    python3 scripts/perf_buckets.py target/profile/uring-close/perf.data --us-per-req 26.4

Each sample goes to one bucket, chosen from its call chain (outermost frame
first): the syscall it is in (`__x64_sys_<name>`, shown as the name), and for
io_uring_enter the operation being issued or completed inside it (io_send,
io_accept, io_recv, ...), else the wait (`schedule` inside io_cqring_wait:
context switch), else the rest of io_uring_enter (submission, CQE posting,
buffer ring). Samples with no kernel frame are "user"; kernel samples outside
any syscall (an interrupt while in user space) are "irq". With --us-per-req,
the shares are also turned into microseconds per request.

Used to read the profiles that scripts/profile.sh writes (it keeps perf.data).
"""

import argparse
import collections
import re
import subprocess
import sys

URING_OPS = [
    ("io_send", "io_uring: send"),
    ("io_sendmsg", "io_uring: send"),
    ("io_accept", "io_uring: accept"),
    ("io_recv", "io_uring: recv"),
    ("io_recvmsg", "io_uring: recv"),
    ("io_shutdown", "io_uring: shutdown"),
    ("io_async_cancel", "io_uring: cancel"),
    ("io_close", "io_uring: close"),
]
SYS_RE = re.compile(r"^__(?:x64|ia32|se)_sys_(\w+)$")
# Syscall bodies that the __x64_sys_ wrapper tail-calls (so the wrapper is
# missing from the chain).
INNER = {
    "do_writev": "writev", "__sys_sendto": "sendto", "__sys_recvfrom": "recvfrom",
    "__sys_accept4": "accept4", "do_epoll_wait": "epoll_wait", "do_epoll_ctl": "epoll_ctl",
    "ksys_read": "read", "ksys_write": "write", "__sys_sendmsg": "sendmsg", "__sys_recvmsg": "recvmsg",
}
FRAME_RE = re.compile(r"^\s*([0-9a-f]+)\s+(\S+?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)\s*$")


def bucket(frames):
    """frames: list of (symbol, is_kernel), leaf first."""
    if not any(k for _, k in frames):
        return "user"
    outer = list(reversed(frames))
    names = [s for s, _ in outer]
    if "__do_sys_io_uring_enter" in names:
        i = names.index("__do_sys_io_uring_enter")
        inner = names[i + 1:]
        for fn, label in URING_OPS:
            if fn in inner:
                return label
        if "schedule" in inner or "schedule_hrtimeout_range_clock" in inner:
            return "io_uring: wait, context switch"
        if "io_cqring_wait" in inner:
            return "io_uring: wait, other"
        return "io_uring: enter, other (submit, CQEs, buffers)"
    for s in names:
        m = SYS_RE.match(s)
        if m or s in INNER:
            name = m.group(1) if m else INNER[s]
            if name in ("epoll_wait", "epoll_pwait") and "schedule" in names:
                return name + ", context switch"
            return name
    if "do_syscall_64" in names:
        if "task_work_run" in names:
            return "task work on return to user (deferred fput)"
        return "syscall entry/exit"
    return "irq"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="perf.data")
    ap.add_argument("--us-per-req", type=float, help="CPU us per request, to convert shares")
    ap.add_argument("--top", type=int, default=16)
    args = ap.parse_args()
    out = subprocess.run(["perf", "script", "-i", args.data, "-F", "ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    total = 0
    for block in out.split("\n\n"):
        frames = []
        for line in block.splitlines():
            m = FRAME_RE.match(line)
            if m:
                frames.append((m.group(2), "kernel.kallsyms" in m.group(3)))
        if not frames:
            continue
        total += 1
        counts[bucket(frames)] += 1
    if not total:
        sys.exit("no samples")
    print(f"{total} samples")
    print(f"| bucket | share |{' us/req |' if args.us_per_req else ''}")
    print(f"|---|---:|{'---:|' if args.us_per_req else ''}")
    for name, n in counts.most_common(args.top):
        row = f"| {name} | {100 * n / total:.1f}% |"
        if args.us_per_req:
            row += f" {args.us_per_req * n / total:.2f} |"
        print(row)


if __name__ == "__main__":
    main()

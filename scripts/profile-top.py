#!/usr/bin/env python3
"""Summarises collapsed perf stacks (inferno-collapse-perf output).

    python3 scripts/profile-top.py target/profile/enrol.folded

Prints the share of samples under each named cost (a stack counts once for
a cost when any of its frames matches) and the functions with the most self
samples. Used by scripts/profile-enrol.sh.
"""

import re
import sys
from collections import Counter

# (cost, pattern any frame of a stack may match). Inclusive: they overlap
# (a serde_json call inside hyper's handler counts for both).
COSTS = [
    ("kernel: network (tcp, sockets, loopback)",
     r"^(tcp_|sock_|__sys_send|__sys_recv|__x64_sys_(sendto|recvfrom|write|read|writev)|ip_|__netif|net_rx).*_\[k\]$"),
    ("kernel: scheduling and wake-ups (futex, epoll)",
     r"^(futex_|__x64_sys_futex|do_epoll|__x64_sys_epoll|schedule|try_to_wake_up).*_\[k\]$"),
    ("hyper (HTTP/1 server, parsing, encoding)", r"^hyper::|<hyper::"),
    ("redis client (commands, pipelines, parsing)", r"^redis::|<redis::|combine::"),
    ("tokio-postgres / deadpool (the shards' writes)", r"tokio_postgres|postgres_protocol|deadpool"),
    ("serde_json (request and answer bodies)", r"serde_json"),
    ("JWT (jsonwebtoken, HMAC)", r"jsonwebtoken|hmac|sha2::"),
    ("tracing (spans, events)", r"tracing::|tracing_core|tracing_subscriber"),
    ("metrics (counters, histograms)", r"^metrics::|metrics_exporter_prometheus|metrics_util"),
    ("allocation (malloc, free)", r"malloc|_int_free|cfree|__libc_free|realloc|__rust_alloc|__rust_dealloc"),
    ("the persistence shards (registrar::sync)", r"registrar::sync::"),
    ("registration handler (registrar::http::registration)", r"registrar::http::registration"),
]


def main(path: str) -> None:
    stacks = []
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            stacks.append((frames, n))
            total += n
    if total == 0:
        print("no samples")
        return
    print(f"{total} samples of the server process")
    print()
    print("share of samples under each cost: inclusive (overlapping), then self")
    for name, pattern in COSTS:
        rx = re.compile(pattern)
        hit = sum(n for frames, n in stacks if any(rx.search(fr) for fr in frames))
        # Self: samples whose innermost frame of this program's own code
        # (kernel and libc frames skipped) matches.
        own = sum(n for frames, n in stacks if rx.search(innermost(frames)))
        print(f"  {100.0 * hit / total:5.1f}%  {100.0 * own / total:5.1f}%  {name}")
    kernel = sum(n for frames, n in stacks if frames[-1].endswith("_[k]"))
    print(f"  {100.0 * kernel / total:5.1f}%  in the kernel (innermost frame), all causes")
    by_crate = Counter()
    for frames, n in stacks:
        frame = innermost(frames)
        by_crate["kernel" if frame.endswith("_[k]") else crate_of(frame)] += n
    print()
    print("self samples by crate (innermost frame outside the kernel and the allocator):")
    for name, n in by_crate.most_common(16):
        print(f"  {100.0 * n / total:5.1f}%  {name}")
    selfs = Counter()
    for frames, n in stacks:
        selfs[simplify(frames[-1])] += n
    print()
    print("top 25 functions by self samples:")
    for name, n in selfs.most_common(25):
        print(f"  {100.0 * n / total:5.1f}%  {name[:140]}")


def innermost(frames: list) -> str:
    """The innermost frame that is not the kernel's or libc's (for self
    time of a library: its call into the kernel still counts for it), or
    the innermost frame when all are."""
    for frame in reversed(frames):
        if not frame.endswith("_[k]") and not frame.startswith(("__", "mi_", "_int_")):
            return frame
    return frames[-1]


def crate_of(frame: str) -> str:
    """`tokio` for `tokio::runtime::...`, `hyper` for `<hyper::X as Y>::z`."""
    m = re.match(r"[<&\s]*(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", frame)
    return m.group(1) if m else frame.split("(")[0][:40]


def simplify(frame: str) -> str:
    # Drop generic arguments and hashes so one function is one row.
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    return frame


if __name__ == "__main__":
    main(sys.argv[1])

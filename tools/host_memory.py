"""What a page fault costs on this host, in memory freed a moment ago and in memory freed a
few seconds ago, with 4 KiB pages (torch's CPU tensors: a fresh actor's first tile) and with
transparent huge pages.

    python tools/host_memory.py [--mib 512] [--pause 5] [--rounds 3]

On a virtual machine whose balloon device reports free pages to its host (virtio-balloon's
free page reporting, in blocks of 2 MiB and up), memory the guest has freed is handed back to
the hypervisor after a while, and touching it again faults at the host too. Each round, with
4 KiB pages and then with transparent huge pages (what numpy asks for on large arrays), maps
and touches --mib MiB, frees it, touches as much again at once, frees it, waits --pause
seconds and touches it again. It prints microseconds per 4 KiB, median [min-max] of the
rounds, the loop's own cost (the same pages written again), and whether this machine's
balloon reports free pages.
"""

from __future__ import annotations

import argparse
import mmap
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from timing import spread  # noqa: E402

PAGE = 4096
REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING


def balloon_reports_free_pages() -> bool | None:
    """Whether a virtio balloon with free page reporting is bound here (None: no balloon)."""
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if (dev / "device").read_text().strip() == "0x0005":
                return (dev / "features").read_text()[REPORTING_BIT] == "1"
        except OSError:
            continue
    return None


def touch_us(nbytes: int, huge: bool) -> tuple[float, float]:
    """Maps nbytes afresh (asking for transparent huge pages if huge), writes one byte per
    4 KiB page twice, unmaps: microseconds per 4 KiB of the first pass (the faults) and of
    the second (the loop alone)."""
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as malloc maps
    if huge:
        buf.madvise(mmap.MADV_HUGEPAGE)
    took = []
    for _ in range(2):
        start = time.perf_counter()
        for off in range(0, nbytes, PAGE):
            buf[off] = 1
        took.append((time.perf_counter() - start) / (nbytes // PAGE) * 1e6)
    buf.close()
    return took[0], took[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--pause", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.mib < 1 or args.pause < 0 or args.rounds < 1:
        raise SystemExit("host_memory: --mib and --rounds must be at least 1, --pause at least 0")
    nbytes = args.mib << 20
    reports = balloon_reports_free_pages()
    print(f"virtio balloon free page reporting: "
          f"{'no balloon' if reports is None else ('on' if reports else 'off')}; "
          f"{args.mib} MiB, {args.rounds} rounds, microseconds per 4 KiB, median [min-max]")
    us = "{:.2f}"
    for huge in (False, True):
        hot, cold, loop = [], [], []
        for _ in range(args.rounds):
            touch_us(nbytes, huge)
            hot.append(touch_us(nbytes, huge)[0])
            time.sleep(args.pause)
            first, again = touch_us(nbytes, huge)
            cold.append(first)
            loop.append(again)
        print(f"{'2 MiB huge pages' if huge else '4 KiB pages':>16}: freed a moment ago "
              f"{spread(hot, us)}; freed {args.pause:g} s ago {spread(cold, us)}; "
              f"touched again (the loop alone) {spread(loop, us)}")


if __name__ == "__main__":
    main()

"""The Ray reaper: cleans up after a local Ray instance whatever happens to the command.

Started by ``executors.ray`` as a script (``python reaper.py DRIVER_PID TEMP_DIR``, its own session,
so a Ctrl-C or a process-group kill of the command does not reach it; standard library only, so
it starts in milliseconds without importing the package or torch). It remembers the driver's Ray
descendants (Linux ``/proc``; pid and start time, so a reused pid is never hit); when the
driver's pipe to its stdin closes (the driver ended, however: ``kill -9`` included) it kills
those still alive (SIGTERM, then SIGKILL) and removes the temp directory. Ray leaves its
dashboard and runtime-env agents running otherwise.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time


def start_time(pid: int) -> bytes | None:
    """A process's start time (clock ticks since boot), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def ray_descendants(root: int) -> dict[int, bytes]:
    """Every descendant of ``root`` whose command line mentions ray: pid -> start time."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    children.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    out: dict[int, bytes] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                is_ray = b"ray" in f.read()
        except OSError:
            continue
        start = start_time(pid)
        if is_ray and start is not None and pid != os.getpid():
            out[pid] = start
    return out


def main(driver: int, temp_dir: str) -> None:
    """Watch ``driver`` until its pipe closes, then reap (module doc)."""
    seen: dict[int, bytes] = {}
    while True:
        ready = select.select([sys.stdin], [], [], 0.5)[0]
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        seen.update(ray_descendants(driver))
    time.sleep(1.0)  # after a clean ray.shutdown() nothing is left to do
    for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        alive = [pid for pid, start in seen.items() if start_time(pid) == start]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if alive and pause:
            time.sleep(pause)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])

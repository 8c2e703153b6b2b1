"""
Runs a command on a pseudo-terminal, waits until its output holds a marker, then hangs the
terminal up (closes its master side, as a terminal window or an SSH session that closes does:
the command gets SIGHUP, and its writes to the terminal fail from then on). Prints how the
command ended as one JSON line: {"code": N} or {"signal": N}, or {"timeout": "..."} when the
marker did not come within the time given.

    python3 hangup.py MARKER TIMEOUT_SECONDS COMMAND [ARG...]
"""
import json
import os
import pty
import select
import signal
import sys
import time

marker = sys.argv[1].encode()
deadline = time.monotonic() + float(sys.argv[2])
command = sys.argv[3:]

pid, fd = pty.fork()
if pid == 0:
    os.execvp(command[0], command)

seen = b""
while marker not in seen:
    left = deadline - time.monotonic()
    if left <= 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(json.dumps({"timeout": "no " + sys.argv[1] + " in: " + seen[-2000:].decode(errors="replace")}))
        sys.exit(0)
    ready, _, _ = select.select([fd], [], [], left)
    if ready:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        seen += chunk

os.close(fd)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    print(json.dumps({"signal": os.WTERMSIG(status)}))
else:
    print(json.dumps({"code": os.WEXITSTATUS(status)}))

"""
Runs a command on a pseudo-terminal, waits until its output holds a marker, then hangs the
terminal up (closes its master side, as a terminal window or an SSH session that closes does:
the command gets SIGHUP, and its writes to the terminal fail from then on). Prints how the
command ended as one JSON line: {"code": N} or {"signal": N}, or {"timeout": "..."} when the
marker did not come, or the command did not end, within the time given (it is then killed).

    python3 hangup.py [--no-sighup] MARKER TIMEOUT_SECONDS COMMAND [ARG...]

--no-sighup: the terminal is not the command's controlling terminal (as for a job that its shell
did not tell, `disown`ed or started by a shell that exited first): it hangs up without a SIGHUP
reaching the command; only its writes fail.
"""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
no_sighup = args[0] == "--no-sighup"
if no_sighup:
    args = args[1:]
marker = args[0].encode()
deadline = time.monotonic() + float(args[1])
command = args[2:]

if no_sighup:
    fd, slave = pty.openpty()
    child = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    pid = child.pid
else:
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)


def give_up(why):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)
    print(json.dumps({"timeout": why}))
    sys.exit(0)


seen = b""
while marker not in seen:
    left = deadline - time.monotonic()
    if left <= 0:
        give_up("no " + args[0] + " in: " + seen[-2000:].decode(errors="replace"))
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
# Waits for the end within what is left of the time given (pidfd: no polling).
pidfd = os.pidfd_open(pid)
left = max(0.0, deadline - time.monotonic())
if not select.select([pidfd], [], [], left)[0]:
    give_up("still running after the hang-up")
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    print(json.dumps({"signal": os.WTERMSIG(status)}))
else:
    print(json.dumps({"code": os.WEXITSTATUS(status)}))

"""Drives vendbox with the stock `e2b` Python SDK (pinned in requirements.txt), unchanged: only
the environment points it here (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY = a vendbox API key).

Usage: python3 e2b_sdk.py VENDBOX_URL

Prints one JSON object of what each step saw, for crates/vendbox/tests/e2b.rs to check; a step
that raises ends the script with the traceback on stderr and a non-zero status.
"""

import json
import sys
import time
import urllib.request

from e2b import CommandExitException, PtySize, Sandbox

VENDBOX = sys.argv[1].rstrip("/")
seen = {}

# Create: template, timeout, metadata and environment variables.
started = time.monotonic()
sbx = Sandbox.create(template="base", timeout=300, metadata={"job": "e2b-test"}, envs={"GREETING": "hello"})
seen["create_seconds"] = time.monotonic() - started
seen["sandbox_id"] = sbx.sandbox_id
seen["listed"] = [s.sandbox_id for s in Sandbox.list().next_items()]
seen["metadata"] = sbx.get_info().metadata

# Foreground with output callbacks; the sandbox's environment variables reach the command.
out, err = [], []
result = sbx.commands.run("echo $GREETING; echo oops >&2; exit 0", on_stdout=out.append, on_stderr=err.append)
seen["run"] = {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
               "callback_stdout": "".join(out), "callback_stderr": "".join(err)}
try:
    sbx.commands.run("exit 3")
    seen["exit_3"] = None
except CommandExitException as e:
    seen["exit_3"] = e.exit_code

# Background + wait.
handle = sbx.commands.run("sleep 1; echo done", background=True)
seen["background"] = handle.wait().stdout

# Stdin.
handle = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(handle.pid, "to stdin\n")
sbx.commands.close_stdin(handle.pid)
seen["stdin"] = handle.wait().stdout

# Kill, and the process list.
handle = sbx.commands.run("sleep 120", background=True)
seen["listed_pids"] = [p.pid for p in sbx.commands.list()]
seen["kill_pid_listed"] = handle.pid in seen["listed_pids"]
seen["killed"] = sbx.commands.kill(handle.pid)
try:
    handle.wait()
    seen["killed_exit"] = "no error"
except CommandExitException as e:
    seen["killed_exit"] = e.exit_code

# A 30-second command.
started = time.monotonic()
result = sbx.commands.run("sleep 30; echo slept", timeout=90)
seen["long"] = {"stdout": result.stdout, "seconds": time.monotonic() - started}

# Files.
seen["write"] = sbx.files.write("/tmp/e2b/a.txt", "hello file").path
seen["read"] = sbx.files.read("/tmp/e2b/a.txt")
seen["made_dir"] = sbx.files.make_dir("/tmp/e2b/sub")
seen["made_dir_again"] = sbx.files.make_dir("/tmp/e2b/sub")
seen["list"] = sorted(e.name for e in sbx.files.list("/tmp/e2b"))
seen["renamed"] = sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/b.txt").path
seen["exists_after_rename"] = [sbx.files.exists("/tmp/e2b/a.txt"), sbx.files.exists("/tmp/e2b/b.txt")]
sbx.files.remove("/tmp/e2b/b.txt")
seen["exists_after_remove"] = sbx.files.exists("/tmp/e2b/b.txt")

# Watching a directory.
sbx.files.make_dir("/tmp/watched")
watcher = sbx.files.watch_dir("/tmp/watched")
sbx.files.write("/tmp/watched/new.txt", "x")
events = []
deadline = time.monotonic() + 10
while time.monotonic() < deadline and not events:
    time.sleep(0.3)
    events = watcher.get_new_events()
watcher.stop()
seen["watch"] = [(e.name, e.type.name if hasattr(e.type, "name") else str(e.type)) for e in events]

# A PTY: create, input, resize.
pty_out = []
terminal = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.send_stdin(terminal.pid, b"stty size; echo pty-$((6*7))\n")
time.sleep(1.5)  # the shell answers at its size before the resize
sbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
sbx.pty.send_stdin(terminal.pid, b"stty size; exit\n")
try:
    terminal.wait(on_pty=lambda data: pty_out.append(bytes(data).decode(errors="replace")))
except CommandExitException:
    pass
seen["pty"] = "".join(pty_out)

# A server in the box, reached by get_host through vendbox's port proxy.
sbx.commands.run("mkdir -p /tmp/site && echo served-from-box > /tmp/site/index.html")
sbx.commands.run("cd /tmp/site && python3 -m http.server 8000", background=True)
host = sbx.get_host(8000)
seen["host"] = host
body = None
deadline = time.monotonic() + 20
while time.monotonic() < deadline and body is None:
    try:
        request = urllib.request.Request(VENDBOX + "/index.html",
                                         headers={"Host": host, "e2b-traffic-access-token": sbx.traffic_access_token or ""})
        body = urllib.request.urlopen(request, timeout=5).read().decode()
    except Exception as e:  # not up yet
        seen["host_error"] = str(e)
        time.sleep(0.3)
seen["served"] = body

# Connect: another handle, with an access token of its own; every earlier handle keeps working
# (a timeout shorter than what is left buys nothing).
second = Sandbox.connect(sbx.sandbox_id, timeout=60)
seen["connected"] = second.sandbox_id
seen["second_run"] = second.commands.run("echo from-second").stdout
seen["first_after_connect"] = sbx.commands.run("echo from-first").stdout
third = Sandbox.connect(sbx.sandbox_id, timeout=60)
seen["third_run"] = third.commands.run("echo from-third").stdout
seen["second_after_third"] = second.commands.run("echo second-again").stdout
seen["first_after_third"] = sbx.commands.run("echo first-again").stdout

# Timeout, then kill.
sbx.set_timeout(120)
seen["end_after_set_timeout"] = sbx.get_info().end_at.isoformat()
seen["running_before_kill"] = sbx.is_running()
sbx.kill()
seen["listed_after_kill"] = [s.sandbox_id for s in Sandbox.list().next_items()]

print(json.dumps(seen))

"""One E2B round per line read from stdin, for crates/vendbox/benches/boxes.rs: the stock `e2b`
SDK's Sandbox.create and its first commands.run (`true`), timed from the call to the answer, then
the sandbox killed (not timed). Prints the round's milliseconds, one line each.

Environment: E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY, as for any E2B client.
"""

import sys
import time

from e2b import Sandbox

for _ in sys.stdin:
    started = time.monotonic()
    sandbox = Sandbox.create(timeout=120)
    sandbox.commands.run("true")
    elapsed = time.monotonic() - started
    sandbox.kill()
    print(f"{elapsed * 1000:.3f}", flush=True)

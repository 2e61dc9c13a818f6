"""A worker run from a git checkout: asks the hello service for /health every few seconds."""

import os
import signal
import sys
import time
import urllib.request

url = os.environ.get("HELLO_URL", "http://127.0.0.1:8573/health")
replica = os.environ.get("REPLICA", "?")
interval = float(os.environ.get("INTERVAL", "5"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

print(f"worker {replica}: version {os.environ.get('SUPERVISE_VERSION')}, checking {url}", flush=True)
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            print(f"worker {replica}: hello says {response.read().decode().strip()}", flush=True)
    except OSError as exc:
        print(f"worker {replica}: hello unreachable: {exc}", flush=True)
    time.sleep(interval)

"""The build step of the hello service: renders build/index.html from the template."""

import html
import time
from pathlib import Path

here = Path(__file__).parent
template = (here / "index.html.in").read_text()
(here / "build").mkdir(exist_ok=True)
page = template.replace("@BUILT@", html.escape(time.strftime("%Y-%m-%d %H:%M:%S")))
(here / "build" / "index.html").write_text(page)
print(f"built {here / 'build' / 'index.html'} ({len(page)} bytes)")

"""peak_rss_bytes (what `beautyrt bench` reports as peak RSS) is in bytes and follows real allocations."""

import json
import subprocess
import sys

import pytest

# a fresh interpreter: the suite's own process may already have peaked higher than anything allocated here
PROBE = """
import json, numpy as np
from beautyrt.runtime.timing import peak_rss_bytes
before = peak_rss_bytes()
a = np.ones(300 * 2**20 // 8)  # 300 MiB, every page written
print(json.dumps([before, peak_rss_bytes()]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no getrusage on Windows")
def test_peak_rss_grows_by_what_is_touched():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before, after = json.loads(r.stdout)
    assert before > 20 * 2**20  # an interpreter with numpy is tens of MiB (the value is bytes, not KiB)
    assert after - before >= 250 * 2**20, (before, after)
    assert after < before + 2 * 2**30  # not a unit 1024x too large

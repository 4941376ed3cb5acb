"""The allocator settings: applied on import, left alone when asked, and what they are for: no fresh pages
for every frame's temporaries, whatever the process did before."""

import json
import os
import subprocess
import sys

import pytest

from diffranb import allocator

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")

# In a fresh process: hold a chunk of detector frames and their 8-bit images, as an extraction worker does,
# then count the page faults of the spot statistics per frame, after one warm-up call.
FAULTS = """
import json, resource
import numpy as np
import diffranb
from diffranb import allocator, features
raw = np.random.default_rng(0).integers(0, 3600, (40, 512, 512)).astype(np.uint16)
frames = [np.sqrt(r).astype(np.uint8) for r in raw]
features.spot_features(frames[0], 5)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(10):
    features.spot_features(frames[k], 5)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
print(json.dumps({"configured": allocator.configured(), "faults": faults}))
"""


def _child(code, **env):
    """Run ``code`` in a fresh interpreter with ``env`` on top of this environment, less anything that would
    set the allocator otherwise; its last line of output, parsed, and its standard error."""
    own = {"DIFFRANB_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD"} | set(allocator.GLIBC_VARIABLES)
    base = {k: v for k, v in os.environ.items() if k not in own}
    done = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@glibc_only
def test_settings_spare_every_frame_the_kernels_fresh_pages():
    tuned, _ = _child(FAULTS)
    plain, _ = _child(FAULTS, DIFFRANB_MALLOC="glibc")
    assert tuned["configured"] and not plain["configured"]
    # glibc maps each temporary of a MiB or more afresh: hundreds of 4 KiB pages per call (2,200 on a real frame)
    assert plain["faults"] > 500
    assert tuned["faults"] < 20


@glibc_only
def test_glibc_variables_and_unknown_values_leave_glibc_alone():
    code = "import json, diffranb; from diffranb import allocator; print(json.dumps(allocator.configured()))"
    assert _child(code)[0] is True
    assert _child(code, MALLOC_MMAP_THRESHOLD_="1048576")[0] is False
    assert _child(code, MALLOC_TRIM_THRESHOLD_="1048576")[0] is False
    assert _child(code, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")[0] is False
    assert _child(code, GLIBC_TUNABLES="glibc.rtld.optional_static_tls=2048")[0] is True  # not the allocator's
    value, stderr = _child(code, DIFFRANB_MALLOC="fast")
    assert value is False and "DIFFRANB_MALLOC='fast' is not understood" in stderr


def test_no_glibc_no_change(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {"configured": None})
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.delenv("DIFFRANB_MALLOC", raising=False)
    assert allocator.configure() is False and allocator.configured() is False

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
    base = {k: v for k, v in os.environ.items() if k not in ("DIFFRANB_MALLOC", "MALLOC_MMAP_THRESHOLD_")}
    done = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True)
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
    value, stderr = _child(code, DIFFRANB_MALLOC="fast")
    assert value is False and "DIFFRANB_MALLOC='fast' is not understood" in stderr

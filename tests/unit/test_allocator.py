"""The allocator settings: applied on import, left alone when asked, and what they are for: no fresh pages
for every frame's temporaries, whatever the process did before."""

import json
import os
import subprocess
import sys

import pytest

from diffranb import allocator

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")

# In a fresh process, as sorting frames does: allocate a frame's worth of temporaries of 2 MiB, free them all,
# and again, ten times; page faults per round after the first.
ROUNDS = """
import json, resource
import numpy as np
import diffranb
from diffranb import allocator
def one_round():
    held = [np.ones(2 << 20, np.uint8) for _ in range(6)]
    del held
one_round()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_round()
print(json.dumps({"configured": allocator.configured(),
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10}))
"""

# The spot statistics of 512² frames, held as an extraction worker holds them: faults per frame of ten new
# frames, once the heap has reached its working size (it takes a few frames: their peaks' counts, and so their
# temporaries, differ).
SPOTS = """
import json, resource
import numpy as np
import diffranb
from diffranb import allocator, features
raw = np.random.default_rng(0).integers(0, 3600, (40, 512, 512)).astype(np.uint16)
frames = [np.sqrt(r).astype(np.uint8) for r in raw]
for k in range(20, 25):  # other frames first: the heap grows to the size a frame's temporaries need
    features.spot_features(frames[k], 5)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(10):
    features.spot_features(frames[k], 5)
print(json.dumps({"configured": allocator.configured(),
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10}))
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
def test_settings_keep_a_frames_temporaries_on_the_heap():
    tuned, _ = _child(ROUNDS)
    plain, _ = _child(ROUNDS, DIFFRANB_MALLOC="glibc")
    assert tuned["configured"] and not plain["configured"]
    # glibc's own trim threshold is twice the largest block freed so far (4 MiB here): the 12 MiB freed at the
    # top of the heap go back to the kernel every round, and come back as 3,072 fresh 4 KiB pages
    assert plain["faults"] > 2000
    assert tuned["faults"] < 20


@glibc_only
def test_spot_statistics_fault_in_no_fresh_pages():
    tuned, _ = _child(SPOTS)
    assert tuned["configured"] and tuned["faults"] < 20  # 2,700 per frame in a worker before the settings


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

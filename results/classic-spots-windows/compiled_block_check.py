"""Extract the full spot block (three median windows, detector mask of the set) again with the compiled spot
statistics into a scratch cache, and compare it with the block cached by the numpy and OpenCV steps.

    python results/classic-spots-windows/compiled_block_check.py data/diffranet.h5 /tmp/spots-check

Prints one JSON line: frames, columns, whether the two blocks are equal byte for byte, the extraction's wall
time on two processes.
"""
import json
import sys
import time

import numpy as np

from diffranb import features


def main(data, scratch):
    cached = features.FeatureStore(data, progress=False)
    before = cached.block("spots")  # the set's cached block
    again = features.FeatureStore(data, scratch, workers=2, progress=False)
    start = time.perf_counter()
    block = again.block("spots", mask=cached.mask())
    print(json.dumps({"frames": len(block), "columns": block.shape[1], "same_bytes": block.tobytes() == before.tobytes()
                      and block.shape == before.shape, "extract_seconds_2proc": time.perf_counter() - start}))


if __name__ == "__main__":
    main(*sys.argv[1:3])

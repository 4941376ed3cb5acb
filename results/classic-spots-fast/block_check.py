"""Check the cached spot block of every background against the statistics taken one frame at a time: the
compiled block (features.spot_block) and the numpy/OpenCV reference of each background, on a seeded sample of
frames; and, if the cache still holds the block of the three windows the earlier searches used (extractor
version 3, windows 5, 7, 9), that its 75 columns are the first 75 of the new block, on every frame. Writes a
JSON record.

    python results/classic-spots-fast/block_check.py data/diffranet.h5 results/classic-spots-fast/block_check.json
"""
import datetime
import json
import subprocess
import sys

import numpy as np

from diffranb import dataset, features

FRAMES = 200
#: The three-window block of the earlier searches, in the cache of data/diffranet.h5.
OLD_BLOCK = "74533e7b5158055e/spots-bc64032856ba.npz"


def main(data, out):
    store = features.FeatureStore(data, progress=False, workers=0)
    block, mask = store.block("spots"), store.mask()
    sample = np.sort(np.random.default_rng(0).choice(len(store), FRAMES, replace=False))
    compiled = reference = 0
    with dataset.open_dataset(data) as ds:
        for i in sample:
            image = ds.image8(int(i))
            compiled += np.array_equal(features.spot_block(image, features.SPOT_WINDOWS, mask), block[i])
            reference += np.array_equal(np.concatenate([features._spot_features_reference(image, w, mask)
                                                        for w in features.SPOT_WINDOWS]), block[i])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"command": " ".join(["python", *sys.argv]), "commit": commit, "date": datetime.date.today().isoformat(),
              "dataset_sha256": store.content_sha256,
              "windows": list(features.SPOT_WINDOWS), "block_shape": list(block.shape), "frames_checked": FRAMES,
              "equal_to_spot_block": int(compiled), "equal_to_reference": int(reference)}
    old = store.dir.parent / OLD_BLOCK
    record["old_three_window_block"] = OLD_BLOCK if old.is_file() else "absent"
    if old.is_file():
        before = np.load(old)["features"]
        record["old_block_equals_first_75_columns"] = bool(np.array_equal(before, block[:, :before.shape[1]]))
    print(record)
    with open(out, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])

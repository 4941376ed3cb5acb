"""The screen that decided which backgrounds the search of this folder offers: forests of one setting (four
seeds) and SVMs of one setting, fitted on the training split and scored on the validation split only, on sets
of spot backgrounds side by side. Reads the cached spot block; writes screen.json.

    python results/classic-spots-fast/screen.py data/diffranet.h5 results/classic-spots-fast/screen.json
"""
import datetime
import json
import subprocess
import sys

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from diffranb import classic, features

SETS = [(5,), (5, 7, 9), (5, "5x2"), (5, "5x2", "5x3")]
WEIGHTS = "empty-0.35"  # the three-window search's forest: 100 trees, 25 % of features, depth 20


def main(data, out):
    store = features.FeatureStore(data, progress=False)
    block, labels = store.block("spots"), np.asarray(store.labels)
    train, val = store.indices("train"), store.indices("val")
    weights = classic.class_weight(WEIGHTS, len(store.classes))
    rows = []
    for windows in SETS:
        x = block[:, features.spot_columns(windows)]
        forests = []
        for seed in range(4):
            rf = RandomForestClassifier(100, max_features=0.25, max_depth=20, class_weight=weights, n_jobs=2,
                                        random_state=seed).fit(x[train], labels[train])
            forests.append(float((rf.predict(x[val]) == labels[val]).mean()))
        svm = classic.ClassicConfig(extractor="spots", window=windows, classifier="svm", C=2.0 ** 15,
                                    gamma=2.0 ** -11, class_weight=WEIGHTS)
        pipe = classic.make_pipeline(svm, len(store.classes)).fit(x[train], labels[train])
        rows.append({"windows": list(windows), "forest_val_accuracy": forests,
                     "forest_val_accuracy_mean": float(np.mean(forests)),
                     "svm_val_accuracy": float((pipe.predict(x[val]) == labels[val]).mean())})
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"command": " ".join(["python", *sys.argv]), "commit": commit, "date": datetime.date.today().isoformat(),
              "dataset_sha256": store.content_sha256,
              "forest": "100 trees, max_features 0.25, max_depth 20, class weights empty-0.35, seeds 0-3",
              "svm": "C = 2^15, gamma = 2^-11, class weights empty-0.35", "split": "val", "sets": rows}
    with open(out, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])

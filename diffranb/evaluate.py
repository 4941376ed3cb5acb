"""How well a classifier sorts frames: the metrics of DiffraNet's Tables 5, 11 and 12, for any saved model.

A saved model is a directory holding ``model.json`` with at least ``{"kind": "classic" | "deepfreak" |
"stacked", "classes": [...], "dataset_hash": ..., "diffranb_version": ...}``. :func:`load_model` reads ``kind``
and hands the directory to :func:`diffranb.classic.load_model`, :func:`diffranb.deepfreak.load_model` or
:func:`diffranb.stack.load_model`; each returns
an object with ``.classes`` and ``.predict(images8) -> (n,) int`` label codes for a (n, M, N) uint8 batch, and
optionally ``.predict_dataset(ds, indices)``. :func:`metrics` and :func:`evaluate_model` serve both.

References
----------
A. Souza, L. B. Oliveira, S. Hollatz, M. Feldman, K. Olukotun, J. M. Holton, A. E. Cohen, L. Nardi,
"DeepFreak: Learning Crystallography Diffraction Patterns with Automated Machine Learning" (2019),
arXiv:1904.11834. https://arxiv.org/abs/1904.11834
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np

#: Classes whose frames hold no crystal diffraction; every other class counts as "diffraction" in the
#: binary accuracy (blank + no-crystal versus the rest).
NO_DIFFRACTION = ("blank", "no-crystal")

#: The paper's reference figures (test accuracy, %). Only the overall numbers are stored: the per-class
#: confusion matrices, precisions and recalls of its Tables 11 and 12 are not reproduced here because they
#: could not be transcribed with certainty.
PAPER = {
    "source": "Souza et al. (2019), arXiv:1904.11834, Tables 5, 11 and 12 (overall figures only)",
    "test_accuracy": {"DeepFreak": 98.51, "RF+GLCM": 98.45, "SVM+GLCM": 97.66},
    "binary_accuracy": 99.83,
    "per_class": None,
}

#: Frames per second of the detector at the paper's beamline: a sorter that keeps up must reach it.
DETECTOR_RATE_HZ = 130.0

#: What a model directory must say about itself.
MODEL_KEYS = ("kind", "classes", "dataset_hash", "diffranb_version")
KINDS = {"classic": "diffranb.classic", "deepfreak": "diffranb.deepfreak", "stacked": "diffranb.stack"}


def read_model_json(path) -> dict:
    """``model.json`` of a saved model directory, checked for the shared keys."""
    file = Path(path) / "model.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r}: not a saved model (no model.json)")
    info = json.loads(file.read_text())
    missing = [k for k in MODEL_KEYS if k not in info]
    if missing:
        raise ValueError(f"{str(file)!r}: missing {missing}")
    if info["kind"] not in KINDS:
        raise ValueError(f"{str(file)!r}: kind = {info['kind']!r}, must be one of {tuple(KINDS)}")
    return info


def class_columns(values, codes, classes) -> np.ndarray:
    """Per-class columns of a scikit-learn estimator (ordered by its ``classes_``, label codes) rearranged into
    the order of ``classes`` (names), with zeros for a class the estimator never saw; (n, len(classes)).

    >>> class_columns([[0.25, 0.75]], [4, 2], ("blank", "weak", "strong")).tolist()
    [[0.0, 0.75, 0.25]]
    """
    from .dataset import ALL_CLASSES

    values = np.asarray(values, dtype=np.float64)
    classes = list(classes)
    out = np.zeros((len(values), len(classes)))
    for column, code in enumerate(codes):
        out[:, classes.index(ALL_CLASSES[int(code)])] = values[:, column]
    return out


def load_model(path):
    """Load a saved model of any kind; the module of its kind is imported only now."""
    info = read_model_json(path)
    return importlib.import_module(KINDS[info["kind"]]).load_model(path)


#: The classes of frames with a crystal in the beam.
CRYSTAL_CLASSES = ("weak", "good", "strong")


def accuracy_among(result: dict, among=CRYSTAL_CLASSES) -> float:
    """Share of the frames of the classes ``among`` (true class) that were classified correctly, from a
    :func:`metrics` result; an error into any class counts, also one outside ``among``.

    Examples
    --------
    >>> m = metrics([0, 2, 2, 3], [0, 1, 2, 3], ["blank", "no-crystal", "weak", "good"])
    >>> accuracy_among(m, ("weak", "good"))
    0.6666666666666666
    """
    classes = list(result["classes"])
    missing = [c for c in among if c not in classes]
    if missing:
        raise ValueError(f"accuracy_among: {missing} not among the result's classes {classes}")
    rows = [classes.index(c) for c in among]
    confusion = np.asarray(result["confusion"], dtype=np.int64)
    total = int(confusion[rows].sum())
    if total == 0:
        raise ValueError(f"accuracy_among: no frame of {list(among)}")
    return float(sum(confusion[r, r] for r in rows)) / total


def metrics(y_true, y_pred, classes) -> dict:
    """Accuracy, confusion matrix, per-class precision / recall / F1, macro-F1 and the binary accuracy.

    Parameters
    ----------
    y_true, y_pred : (n,) int
        Label codes: code i is ``classes[i]``.
    classes : sequence of str

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``classes``, ``confusion`` (rows true, columns predicted), ``per_class``
        ({class: {precision, recall, f1, support}}), ``macro_f1``, ``binary_accuracy`` and
        ``binary_confusion`` (no diffraction, diffraction: :data:`NO_DIFFRACTION` against the rest).
        A precision or recall with nothing to divide by is 0, as scikit-learn's ``zero_division=0``.

    Examples
    --------
    >>> m = metrics([0, 0, 1, 2], [0, 1, 1, 2], ["blank", "no-crystal", "weak"])
    >>> m["accuracy"], m["binary_accuracy"], m["per_class"]["no-crystal"]["precision"]
    (0.75, 1.0, 0.5)
    """
    classes = [str(c) for c in classes]
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape}: must be equal 1-D shapes")
    k = len(classes)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{name}: codes must be in [0, {k}) for classes {classes}")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    empty = np.array([c in NO_DIFFRACTION for c in classes])
    true_bin, pred_bin = ~empty[y_true], ~empty[y_pred]
    binary = np.zeros((2, 2), dtype=np.int64)
    np.add.at(binary, (true_bin.astype(int), pred_bin.astype(int)), 1)
    n = len(y_true)
    return {
        "n": int(n),
        "accuracy": float(np.mean(y_true == y_pred)) if n else float("nan"),
        "classes": classes,
        "confusion": confusion.tolist(),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "macro_f1": float(np.mean(f1[support > 0])) if n else float("nan"),
        "binary_accuracy": float(np.mean(true_bin == pred_bin)) if n else float("nan"),
        "binary_confusion": binary.tolist(),
    }


def predict_split(model, ds, indices, batch_size: int = 64, *, progress: bool = False) -> np.ndarray:
    """Label codes a model predicts for frames ``indices`` of data set ``ds``, streamed in batches, with a
    progress bar if asked."""
    from tqdm.auto import tqdm

    if hasattr(model, "predict_dataset"):
        import inspect

        kw = {"progress": progress} if "progress" in inspect.signature(model.predict_dataset).parameters else {}
        return np.asarray(model.predict_dataset(ds, indices, **kw), dtype=np.int64)
    out = []
    with tqdm(total=len(indices), unit="img", desc="predicting", disable=not progress) as bar:
        for images, _, _ in ds.batches(indices, batch_size, eight_bit=True):
            out.append(np.asarray(model.predict(images), dtype=np.int64))
            bar.update(len(images))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_model(model, ds, split: str = "test", *, progress: bool = False, with_predictions: bool = False
                   ) -> dict:
    """:func:`metrics` of a loaded model on one split of an open data set, with what was evaluated.

    Parameters
    ----------
    model
        From :func:`load_model` (or any object with ``.classes`` and ``.predict``).
    ds : diffranb.dataset.Dataset
    split : {"train", "val", "test"}

    Returns
    -------
    dict
        The metrics, plus ``split``, ``dataset_sha256``, ``model_dataset_sha256``, ``same_dataset`` (whether
        the model was trained on this very set) and ``seconds`` (wall time of the predictions); with
        ``with_predictions``, also ``predictions``: the label code of every frame of the split, in the set's
        order, as a string of digits (what :func:`paired` compares).
    """
    if list(model.classes) != list(ds.classes):
        raise ValueError(f"model classes {list(model.classes)} differ from the data set's {list(ds.classes)}")
    fitted_on = getattr(model, "info", {}).get("fitted_on") if getattr(model, "kind", None) == "stacked" else None
    if fitted_on == split and getattr(model, "dataset_hash", None) == ds.content_sha256:
        raise ValueError(f"the stacked model's combiner was fitted on this set's {split} split: test it on another")
    indices = ds.indices(split)
    start = time.perf_counter()
    y_pred = predict_split(model, ds, indices, progress=progress)
    seconds = time.perf_counter() - start
    out = metrics(ds.labels[indices], y_pred, ds.classes)
    trained_on = getattr(model, "dataset_hash", None)
    out |= {"split": split, "dataset_sha256": ds.content_sha256, "model_dataset_sha256": trained_on,
            "same_dataset": trained_on == ds.content_sha256, "seconds": seconds}
    if with_predictions:
        if len(ds.classes) > 10:
            raise ValueError(f"{len(ds.classes)} classes: predictions are kept as one digit per frame (at most 10)")
        out["predictions"] = "".join(map(str, y_pred.tolist()))
    return out


def paired(record_a, record_b, ds) -> dict:
    """Two models' tests on the same frames compared frame by frame, with McNemar's exact test.

    Parameters
    ----------
    record_a, record_b : str or os.PathLike
        Records of ``diffranb evaluate --record`` on the same split of the same set, each holding its frames'
        predictions (records made before predictions were kept are refused).
    ds : diffranb.dataset.Dataset
        That set, open: its labels.

    Returns
    -------
    dict
        ``a`` and ``b``, the two records' paths as given; ``split``, ``n``; for the set's classes
        (``"classes"``) and for diffraction or not (``"binary"``): each record's accuracy, the frames only A or
        only B got right, and the two-sided p-value of McNemar's exact test (a binomial test of those two
        counts: the chance of a split at least this uneven if both models were equally good on such frames).

    References
    ----------
    Q. McNemar, "Note on the sampling error of the difference between correlated proportions or percentages",
    Psychometrika 12, 153–157 (1947). https://doi.org/10.1007/BF02295996
    T. G. Dietterich, "Approximate statistical tests for comparing supervised classification learning
    algorithms", Neural Computation 10, 1895–1923 (1998). https://doi.org/10.1162/089976698300017197
    """
    from scipy.stats import binomtest

    loaded = []
    for path in (record_a, record_b):
        record = json.loads(Path(path).read_text())
        m = record.get("metrics", {})
        if "predictions" not in m:
            raise ValueError(f"{str(path)!r} holds no predictions: record the test again with diffranb evaluate "
                             "--record")
        if not set(m["predictions"]) <= set("0123456789"[:len(ds.classes)]):
            raise ValueError(f"{str(path)!r}: its predictions are not label codes of the set's {len(ds.classes)} "
                             "classes")
        if m.get("dataset_sha256") != ds.content_sha256:
            raise ValueError(f"{str(path)!r} tested set {str(m.get('dataset_sha256'))[:16]}…, not {ds.path} "
                             f"({ds.content_sha256[:16]}…)")
        loaded.append(m)
    a, b = loaded
    if a["split"] != b["split"]:
        raise ValueError(f"the records tested the {a['split']} and the {b['split']} split: compare the same frames")
    truth = np.asarray(ds.labels[ds.indices(a["split"])], dtype=np.int64)
    pa, pb = (np.frombuffer(m["predictions"].encode(), dtype=np.uint8).astype(np.int64) - ord("0") for m in loaded)
    if not len(pa) == len(pb) == len(truth):
        raise ValueError(f"{len(pa)} and {len(pb)} predictions for the {len(truth)} frames of the {a['split']} split")
    empty = np.array([c in NO_DIFFRACTION for c in ds.classes])
    out = {"a": str(record_a), "b": str(record_b), "split": a["split"], "n": int(len(truth))}
    for name, (t, x, y) in {"classes": (truth, pa, pb), "binary": (empty[truth], empty[pa], empty[pb])}.items():
        right_a, right_b = x == t, y == t
        only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
        p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        out[name] = {"accuracy_a": float(right_a.mean()), "accuracy_b": float(right_b.mean()), "only_a": only_a,
                     "only_b": only_b, "p_value": float(p)}
    return out


def load_paired(path) -> dict:
    """The comparisons of a committed ``paired.json`` (``{"comparisons": [{"command": ..., "result": ...}]}``,
    each result of :func:`paired`), keyed by their two records as given: ``{(a, b): result}``, in the file's
    order."""
    comparisons = json.loads(Path(path).read_text())["comparisons"]
    return {(c["result"]["a"], c["result"]["b"]): c["result"] for c in comparisons}


def read_test_record(path, method: str = "best") -> dict:
    """The test-split metrics (:func:`metrics`) of a committed record, whichever command wrote it.

    ``path`` is a file written by ``diffranb evaluate --record`` (its ``"metrics"``), or the report of
    ``diffranb train deepfreak --report`` (a directory or its ``metrics.json``: its ``"test"``), or of
    ``diffranb tune hyperopt --report`` (``"methods"``: the test of ``method``, e.g. ``"best"`` or
    ``"RF+GLCM"``).
    """
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r}: no such record")
    record = json.loads(file.read_text())
    if "metrics" in record:
        found = record["metrics"]
    elif "methods" in record:
        if method not in record["methods"]:
            raise KeyError(f"{str(file)!r}: no method {method!r} (it has {sorted(record['methods'])})")
        found = record["methods"][method]["test"]
    elif "test" in record:
        found = record["test"]
    else:
        raise ValueError(f"{str(file)!r}: holds no test metrics (no 'metrics', 'methods' or 'test')")
    if found.get("split") != "test":
        raise ValueError(f"{str(file)!r}: its metrics are of the {found.get('split')!r} split, not the test split")
    return found


def comparison_rows(results: dict) -> list[tuple]:
    """Rows (method, ours %, paper %) of test accuracy and the binary accuracy, for a side-by-side table.

    Parameters
    ----------
    results : dict
        Method name (as in :data:`PAPER`, e.g. ``"RF+GLCM"``) → :func:`metrics` output.
    """
    rows = []
    for method, m in results.items():
        rows.append((f"{method} accuracy", 100 * m["accuracy"], PAPER["test_accuracy"].get(method)))
    for method, m in results.items():
        rows.append((f"{method} binary accuracy", 100 * m["binary_accuracy"], PAPER["binary_accuracy"]))
    return rows


def summary_markdown(results: dict) -> str:
    """A Markdown table of accuracy, binary accuracy and accuracy on the crystal frames
    (:func:`accuracy_among`), one row per method (name → :func:`metrics` output).

    >>> m = metrics([0, 2, 3, 4], [0, 2, 3, 3], ["blank", "no-crystal", "weak", "good", "strong"])
    >>> print(summary_markdown({"x": m}))
    | | accuracy | binary | crystal frames |
    |---|---|---|---|
    | x | 75.00 % | 100.00 % | 66.67 % |
    """
    lines = ["| | accuracy | binary | crystal frames |", "|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {100 * m['accuracy']:.2f} % | {100 * m['binary_accuracy']:.2f} % | "
                     f"{100 * accuracy_among(m):.2f} % |")
    return "\n".join(lines)


def format_report(results: dict) -> str:
    """Plain-text report: accuracies next to the paper's, then each method's confusion matrix and
    per-class precision and recall."""
    lines = [f"{'':32s} {'ours (%)':>9s} {'paper (%)':>10s}"]
    for name, ours, paper in comparison_rows(results):
        lines.append(f"{name:32s} {ours:9.2f} {'—' if paper is None else f'{paper:.2f}':>10s}")
    lines.append(f"paper: {PAPER['source']}; its one binary (diffraction / no diffraction) figure stands "
                 "beside every method")
    for method, m in results.items():
        classes = m["classes"]
        lines.append("")
        lines.append(f"{method}: confusion (rows true, columns predicted), n = {m['n']}, "
                     f"macro-F1 {m['macro_f1']:.4f}")
        lines.append(" " * 12 + "".join(f"{c[:10]:>11s}" for c in classes) + f"{'recall':>9s}")
        for c, row in zip(classes, m["confusion"]):
            lines.append(f"{c[:11]:12s}" + "".join(f"{v:11d}" for v in row)
                         + f"{100 * m['per_class'][c]['recall']:9.2f}")
        lines.append(f"{'precision':12s}" + "".join(f"{100 * m['per_class'][c]['precision']:11.2f}"
                                                  for c in classes))
    return "\n".join(lines)


def format_paired(result: dict, name_a: str | None = None, name_b: str | None = None) -> str:
    """Plain-text lines of :func:`paired`: each accuracy, the frames only one model got right, the p-value.

    Parameters
    ----------
    result : dict
        What :func:`paired` returns.
    name_a, name_b : str, optional
        Names of the two models; by default the records' paths the result carries (``a``, ``b``).
    """
    name_a = result.get("a", "A") if name_a is None else name_a
    name_b = result.get("b", "B") if name_b is None else name_b
    lines = [f"A: {name_a}", f"B: {name_b}", f"{result['n']} frames of the {result['split']} split"]
    for name, label in (("classes", "all classes"), ("binary", "diffraction or not")):
        r = result[name]
        lines.append(f"{label}: A {100 * r['accuracy_a']:.2f} %, B {100 * r['accuracy_b']:.2f} %; right only in A "
                     f"{r['only_a']}, only in B {r['only_b']}; McNemar's exact test p = {r['p_value']:.3g}")
    return "\n".join(lines)

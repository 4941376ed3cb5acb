"""Stacked models: one logistic regression on how sure several saved models are of each class.

The spot statistics of a hit finder and DeepFreak miss different frames: the spot counts place the crystal
classes better, the network tells weak frames from empty ones better (``results/``); a forest and an SVM on the
same spot statistics also err on different frames. A stacked model asks every *member* (any saved classic
pipeline or DeepFreak network) how sure it is of each class: the logarithms of its class probabilities, or an
SVM's decision values (:func:`member_inputs`), and lets a multinomial logistic regression (scikit-learn's, on
standardised inputs) decide.

The members learnt the training frames, where they are more confident than anywhere else, so the regression
is fitted on another split, by default the validation split; :func:`fit` refuses a split a member was trained
on, and :func:`diffranb.evaluate.evaluate_model` refuses to test a stacked model on the split it was fitted
on. The validation split is not untouched either: it chose the members' hyperparameters (Hyperopt) and
epoch (DeepFreak), which makes them somewhat surer there than on the test split. A saved stacked model is a
directory with ``model.json`` (what it was fitted on, and each member's path relative to it with a SHA-256 of
every file of the member, checked on loading) and ``combiner.skops``, which :func:`load_model` reads without
unpickling, like a classic pipeline.

References
----------
D. H. Wolpert, "Stacked generalization", Neural Networks 5, 241–259 (1992).
https://doi.org/10.1016/S0893-6080(05)80023-1
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

KIND = "stacked"
#: Probabilities are clipped to at least this before their logarithm (a member may be certain).
PROBABILITY_FLOOR = 1e-6
#: Version of what the combiner learns from (:func:`member_inputs`), recorded in ``model.json``. 2: an SVM
#: member gives its decision values (1: the logarithm of its 0-or-1 vote; such stacks are refused on loading).
MEMBER_INPUTS = 2
#: The objects a saved combiner may hold (besides plain builtins and numpy data).
TRUSTED_OBJECTS = frozenset({"sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
                             "sklearn.linear_model._logistic.LogisticRegression"})


def member_digest(path) -> str:
    """SHA-256 over every file a saved model loads from its directory (names and contents, in name order;
    DeepFreak's training checkpoint excluded)."""
    path = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "checkpoint" not in p.relative_to(path).parts):
        h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def member_inputs(members, images8) -> np.ndarray:
    """The combiner's inputs for a (n, M, N) uint8 batch, every member's side by side, (n, Σ n_classes)
    float64: the logarithms of a member's class probabilities (a forest's vote shares, a network's softmax),
    floored at :data:`PROBABILITY_FLOOR`, or an SVM's one-vs-rest decision values
    (:meth:`diffranb.classic.ClassicModel.decision`), which say how sure it is where its 0-or-1 vote would not.
    Classic members that compute the same features (:meth:`~diffranb.classic.ClassicModel.feature_key`) share
    one extraction."""
    shared, blocks = {}, []
    for m in members:
        if getattr(m, "kind", None) != "classic":
            blocks.append(np.log(np.clip(np.asarray(m.scores(images8), dtype=np.float64), PROBABILITY_FLOOR, 1.0)))
            continue
        key = m.feature_key()
        if key not in shared:
            shared[key] = np.asarray(m.transform(images8), dtype=np.float64)
        x = shared[key]
        blocks.append(m.decision(x) if m.config.classifier == "svm"
                      else np.log(np.clip(m.scores_of(x), PROBABILITY_FLOOR, 1.0)))
    return np.hstack(blocks)


def _needs_refit(info: dict, members) -> bool:
    """Whether a saved combiner learnt from inputs this version no longer gives its members: before
    :data:`MEMBER_INPUTS` 2, an SVM member entered as the logarithm of its 0-or-1 vote."""
    return info.get("member_inputs", 1) < 2 and any(
        getattr(m, "kind", None) == "classic" and m.config.classifier == "svm" for m in members)


class StackedModel:
    """A logistic regression over its members' log-probabilities and SVM decision values (:func:`member_inputs`).

    Attributes
    ----------
    members : list
        The loaded member models (each with ``.classes`` and ``.scores(images8)``).
    member_paths : list of pathlib.Path
    combiner : sklearn.pipeline.Pipeline
        StandardScaler + LogisticRegression, fitted on label codes.
    classes : tuple of str
    dataset_hash : str
        Content hash of the set it was fitted on.
    info : dict
        What ``model.json`` records besides (split and size it was fitted on, fit time).
    """

    kind = KIND

    def __init__(self, members, member_paths, combiner, classes, dataset_hash, info=None):
        self.members, self.member_paths = list(members), [Path(p) for p in member_paths]
        self.combiner, self.classes = combiner, tuple(classes)
        self.dataset_hash, self.info = dataset_hash, dict(info or {})

    def label(self) -> str:
        """Short name, e.g. ``RF+SPOTS & DeepFreak``."""
        return " & ".join(m.config.label() if hasattr(m, "config") else
                          "DeepFreak" + (" (spots)" if getattr(m, "input", "frame") == "spots" else "")
                          for m in self.members)

    def scores(self, images8) -> np.ndarray:
        """Class probabilities, (n, n_classes) float64 in the order of :attr:`classes`."""
        from .evaluate import class_columns

        proba = self.combiner.predict_proba(member_inputs(self.members, images8))
        return class_columns(proba, self.combiner.classes_, self.classes)

    def predict(self, images8) -> np.ndarray:
        """Label codes of a (n, M, N) uint8 batch, (n,) int64."""
        return np.asarray(self.combiner.predict(member_inputs(self.members, images8)), dtype=np.int64)

    def predict_dataset(self, ds, indices=None, batch_size: int = 64, *, progress: bool = False) -> np.ndarray:
        """:meth:`predict` for frames of an open data set, streamed from disk; (n,) int64 label codes."""
        return self.combiner.predict(_inputs_of(self.members, ds, indices, batch_size, progress)).astype(np.int64)


def _inputs_of(members, ds, indices, batch_size: int, progress: bool, desc: str = "stacked members"):
    from tqdm.auto import tqdm

    indices = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    parts = []
    with tqdm(total=len(indices), unit="img", desc=desc, disable=not progress) as bar:
        for images, _, _ in ds.batches(indices, batch_size):
            parts.append(member_inputs(members, images))
            bar.update(len(images))
    width = sum(len(m.classes) for m in members)
    return np.concatenate(parts) if parts else np.zeros((0, width))


def fit(member_paths, data, *, split: str = "val", batch_size: int = 64, progress: bool = True) -> StackedModel:
    """Fit a stacked model of saved models on one split of a data set.

    Parameters
    ----------
    member_paths : sequence of str or os.PathLike
        At least two saved model directories (classic or DeepFreak) with the set's classes.
    data : str or os.PathLike
        A data set built by :func:`diffranb.dataset.build`.
    split : {"val", "test", "train"}
        Frames the logistic regression learns from: not a split a member was trained on (refused), and not
        the split it will be tested on (:func:`diffranb.evaluate.evaluate_model` refuses that).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .dataset import ALL_CLASSES, SPLITS, open_dataset
    from .evaluate import load_model

    paths = [Path(p) for p in member_paths]
    if len(paths) < 2:
        raise ValueError(f"members: {len(paths)} given; a stacked model needs at least two")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError(f"members: {[str(p) for p in paths]} name one model twice")
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: must be one of {SPLITS}")
    members = [load_model(p) for p in paths]
    if any(getattr(m, "kind", None) == KIND for m in members):
        raise ValueError("members: a stacked model cannot be a member of another")
    with open_dataset(data) as ds:
        for p, m in zip(paths, members):
            if list(m.classes) != list(ds.classes):
                raise ValueError(f"member {str(p)!r} has classes {list(m.classes)}, the set {list(ds.classes)}")
            trained_on = getattr(m, "info", {}).get("trained_on", "train")  # DeepFreak trains on "train"
            if split == trained_on and m.dataset_hash == ds.content_sha256:
                raise ValueError(f"member {str(p)!r} was trained on this set's {split} split, where it is "
                                 "surer than on any other frames: fit the combiner on another split")
        indices = ds.indices(split)
        present = set(np.unique(ds.labels[indices]).tolist())
        if len(present) < 2:
            raise ValueError(f"{ds.path}: the {split} split holds fewer than two classes")
        missing = [c for c in ds.classes if ALL_CLASSES.index(c) not in present]
        if missing:
            warnings.warn(f"{ds.path}: the {split} split holds no {', '.join(missing)} frame; the stacked model "
                          "will never predict " + ("that class" if len(missing) == 1 else "those classes"),
                          stacklevel=2)
        x = _inputs_of(members, ds, indices, batch_size, progress)
        start = time.perf_counter()
        combiner = Pipeline([("scale", StandardScaler()), ("combine", LogisticRegression(max_iter=5000))])
        combiner.fit(x, ds.labels[indices])
        info = {"fitted_on": split, "n_fit": int(len(indices)), "fit_seconds": time.perf_counter() - start,
                "dataset_path": str(ds.path)}
        return StackedModel(members, paths, combiner, ds.classes, ds.content_sha256, info)


def save_model(model: StackedModel, path) -> Path:
    """Write ``model.json`` and ``combiner.skops`` into directory ``path`` (created if missing). Members are
    recorded by their path relative to ``path`` and the SHA-256 of their ``model.json``."""
    import skops.io as sio

    from . import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sio.dump(model.combiner, path / "combiner.skops")
    members = [{"path": os.path.relpath(p.resolve(), path.resolve()), "kind": m.kind,
                "files_sha256": member_digest(p)} for p, m in zip(model.member_paths, model.members)]
    info = {"kind": KIND, "classes": list(model.classes), "dataset_hash": model.dataset_hash,
            "diffranb_version": __version__, "label": model.label(), "members": members,
            "member_inputs": MEMBER_INPUTS}
    (path / "model.json").write_text(json.dumps(info | model.info, indent=2))
    return path


def load_model(path) -> StackedModel:
    """Read a directory written by :func:`save_model`: its members (refused if one changed since) and its
    combiner (refused if it holds untrusted types)."""
    import skops.io as sio

    from .classic import untrusted_types
    from .evaluate import load_model as load_member, read_model_json

    path = Path(path)
    info = read_model_json(path)
    if info["kind"] != KIND:
        raise ValueError(f"{str(path)!r} holds a {info['kind']!r} model, not a stacked one")
    file = path / "combiner.skops"
    untrusted = untrusted_types(file, TRUSTED_OBJECTS)
    if untrusted:
        raise ValueError(f"{str(path)!r}: the combiner holds types that are not trusted: {untrusted}")
    combiner = sio.load(file, trusted=sio.get_untrusted_types(file=file))
    paths, members = [], []
    for entry in info["members"]:
        p = (path / entry["path"]).resolve()
        if not (p / "model.json").is_file():
            raise FileNotFoundError(f"{str(path)!r}: member {entry['path']!r} is missing (looked in {str(p)!r})")
        if member_digest(p) != entry["files_sha256"]:
            raise ValueError(f"{str(path)!r}: member {str(p)!r} changed since the combiner was fitted on it")
        member = load_member(p)
        if member.kind != entry["kind"] or member.kind == KIND or list(member.classes) != list(info["classes"]):
            raise ValueError(f"{str(path)!r}: member {str(p)!r} is a {member.kind} model of classes "
                             f"{list(member.classes)}, not the {entry['kind']} model of {info['classes']} recorded")
        paths.append(p)
        members.append(member)
    if _needs_refit(info, members):
        raise ValueError(f"{str(path)!r}: the combiner was fitted by diffranb {info.get('diffranb_version')} on an "
                         "SVM member's 0-or-1 vote; it now learns from the SVM's decision values: fit it again "
                         "(diffranb train stacked)")
    extra = {k: v for k, v in info.items() if k not in ("kind", "classes", "dataset_hash", "diffranb_version",
                                                        "label", "members", "member_inputs")}
    return StackedModel(members, paths, combiner, info["classes"], info["dataset_hash"], extra)

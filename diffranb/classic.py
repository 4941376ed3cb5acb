"""DiffraNet's classic classifiers: a feature extractor, a standard scaler and a random forest or an RBF SVM.

A :class:`ClassicConfig` names one point of the paper's joint search space (its Table 7): the extractor and
its parameters, the classifier and its hyperparameters, the class weights and the seed. :func:`train` fits
it on the training split of a data set, from features a :class:`diffranb.features.FeatureStore` extracted
once; :func:`save_model` writes a directory that :func:`load_model` (and :func:`diffranb.evaluate.load_model`)
reads back without unpickling anything: the scikit-learn pipeline is stored with skops and loaded only if
every object in it is on :data:`TRUSTED_OBJECTS` or plain data.

References
----------
L. Breiman, "Random forests", Machine Learning 45, 5–32 (2001). https://doi.org/10.1023/A:1010933404324
C. Cortes, V. Vapnik, "Support-vector networks", Machine Learning 20, 273–297 (1995).
https://doi.org/10.1007/BF00994018
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import features

CLASSIFIERS = ("rf", "svm")
#: Class weights of the search space, by name; the lists weigh blank, no-crystal, weak, good, strong.
CLASS_WEIGHTS = {
    "none": None,
    "balanced": "balanced",
    "empty-0.35": (0.35, 0.35, 0.1, 0.1, 0.1),
    "empty-0.30": (0.3, 0.3, 0.133, 0.133, 0.133),
    "empty-0.25": (0.25, 0.25, 0.166, 0.166, 0.166),
}
SVM_C = tuple(2.0 ** e for e in range(-5, 16, 2))
SVM_GAMMA = tuple(2.0 ** e for e in range(-15, 4, 2))
RF_TREES = (10, 100, 1000)
RF_MAX_FEATURES = ("sqrt", 0.25, 0.5, 0.75)
RF_MAX_DEPTH = (None, 2, 4, 6, 8, 10, 20)

#: The objects a saved pipeline may hold; :func:`load_model` refuses a file with any other object in it.
TRUSTED_OBJECTS = frozenset({
    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree", "sklearn.svm._classes.SVC",
})
#: skops nodes that hold plain data (arrays, containers, scalars, dtypes) of builtins or numpy.
DATA_NODES = frozenset({"NdArrayNode", "TypeNode", "ListNode", "DictNode", "TupleNode", "JsonNode", "SliceNode"})


def pipeline_types(file) -> set:
    """Every (module.class, skops node) a skops file would create, read from its schema without loading it."""
    import zipfile

    with zipfile.ZipFile(file) as z:
        schema = json.loads(z.read("schema.json"))
    found, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.add((f"{node.get('__module__')}.{node['__class__']}", node.get("__loader__")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def untrusted_types(file, trusted=TRUSTED_OBJECTS) -> list:
    """What a skops file holds beyond ``trusted`` (default :data:`TRUSTED_OBJECTS`) and plain builtins / numpy
    data."""
    return sorted(name for name, loader in pipeline_types(file)
                  if name not in trusted
                  and not (loader in DATA_NODES and name.split(".")[0] in ("builtins", "numpy")))


@dataclass(frozen=True)
class ClassicConfig:
    """One classic pipeline: extractor, classifier and their parameters.

    Attributes
    ----------
    extractor : {"glcm", "lbp", "sift", "spots"}
        DiffraNet's three extractors, or the spot statistics of a hit finder (beyond the paper).
    distances : tuple of int, pixels
        GLCM offsets, a non-empty subset of :data:`diffranb.features.GLCM_DISTANCES`.
    angles : tuple of int, degrees
        GLCM directions, a non-empty subset of :data:`diffranb.features.GLCM_ANGLES`.
    points : int
        LBP samples on the circle (:data:`diffranb.features.LBP_POINTS`).
    radius : int, pixels
        LBP circle radius (:data:`diffranb.features.LBP_RADII`).
    words : int
        SIFT vocabulary size (:data:`diffranb.features.SIFT_WORDS`).
    window : int (pixels), str, or a tuple of them
        Background of the spot statistics (:data:`diffranb.features.SPOT_WINDOWS`: a median window in pixels,
        or "5x2" / "5x3", the 5 × 5 median taken again), or a set of them whose statistics are put side by side
        (kept in the order of ``SPOT_WINDOWS``; a set of one is that background).
    classifier : {"rf", "svm"}
    C : float
        SVM penalty, dimensionless (:data:`SVM_C`).
    gamma : float
        RBF width of the SVM on standardised features, dimensionless (:data:`SVM_GAMMA`).
    n_estimators : int
        Trees of the forest (:data:`RF_TREES`).
    max_features : "sqrt" or float
        Features tried per split: √d, or a share of d.
    max_depth : int or None
        Deepest tree level; None grows until leaves are pure.
    class_weight : str
        A key of :data:`CLASS_WEIGHTS`.
    seed : int
        Seed of the forest (and of the SIFT vocabulary).
    """

    extractor: str = "glcm"
    distances: tuple = (1, 2, 4, 5, 8)  # pixels
    angles: tuple = (0, 45, 90, 135)  # degrees
    points: int = 8  # samples
    radius: int = 1  # pixels
    words: int = 100  # visual words
    window: object = 5  # pixels or "5x2" / "5x3", or a tuple of them
    classifier: str = "rf"
    C: float = 1.0  # dimensionless
    gamma: float = 2.0 ** -5  # dimensionless, on standardised features
    n_estimators: int = 100  # trees
    max_features: object = "sqrt"  # "sqrt" or share of features
    max_depth: object = None  # tree levels, or None
    class_weight: str = "none"
    seed: int = 0

    def __post_init__(self):
        if self.extractor not in features.KINDS:
            raise ValueError(f"ClassicConfig.extractor = {self.extractor!r}: must be one of {features.KINDS}")
        object.__setattr__(self, "distances", tuple(int(d) for d in self.distances))
        object.__setattr__(self, "angles", tuple(int(a) for a in self.angles))
        _check_subset("distances", self.distances, features.GLCM_DISTANCES)
        _check_subset("angles", self.angles, features.GLCM_ANGLES)
        _check_in("points", self.points, features.LBP_POINTS)
        _check_in("radius", self.radius, features.LBP_RADII)
        _check_in("words", self.words, features.SIFT_WORDS)
        try:
            windows = features.spot_windows(self.window)
        except ValueError:
            raise ValueError(f"ClassicConfig.window = {self.window!r}: must be one of {features.SPOT_WINDOWS} "
                             "or a non-empty set of them") from None
        object.__setattr__(self, "window", windows[0] if len(windows) == 1 else windows)
        _check_in("classifier", self.classifier, CLASSIFIERS)
        for name in ("C", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < np.inf):
                raise ValueError(f"ClassicConfig.{name} = {value!r}: must be a finite number > 0")
        if not (isinstance(self.n_estimators, (int, np.integer)) and self.n_estimators >= 1):
            raise ValueError(f"ClassicConfig.n_estimators = {self.n_estimators!r}: must be a whole number ≥ 1")
        if not (self.max_features == "sqrt" or (isinstance(self.max_features, float) and 0 < self.max_features <= 1)):
            raise ValueError(f"ClassicConfig.max_features = {self.max_features!r}: must be 'sqrt' or in (0, 1]")
        if not (self.max_depth is None or (isinstance(self.max_depth, (int, np.integer)) and self.max_depth >= 1)):
            raise ValueError(f"ClassicConfig.max_depth = {self.max_depth!r}: must be None or a whole number ≥ 1")
        _check_in("class_weight", self.class_weight, tuple(CLASS_WEIGHTS))

    def feature_params(self) -> dict:
        """Parameters of the extractor, as :meth:`diffranb.features.FeatureStore.features` takes them."""
        return {"glcm": {"distances": self.distances, "angles": self.angles},
                "lbp": {"points": self.points, "radius": self.radius},
                "sift": {"k": self.words, "seed": self.seed}, "spots": {"window": self.window}}[self.extractor]

    def to_dict(self) -> dict:
        """The fields that matter for this extractor and classifier (JSON-ready)."""
        keep = {"extractor", "classifier", "class_weight", "seed"}
        keep |= {"glcm": {"distances", "angles"}, "lbp": {"points", "radius"}, "sift": {"words"},
                 "spots": {"window"}}[self.extractor]
        keep |= {"rf": {"n_estimators", "max_features", "max_depth"}, "svm": {"C", "gamma"}}[self.classifier]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if k in keep}

    @classmethod
    def from_dict(cls, d: dict) -> ClassicConfig:
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ClassicConfig: unknown fields {unknown}")
        return cls(**d)

    def label(self) -> str:
        """Short name, e.g. ``RF+GLCM``."""
        return f"{self.classifier.upper()}+{self.extractor.upper()}"


def _check_in(name, value, allowed):
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"ClassicConfig.{name} = {value!r}: must be one of {allowed}")


def _check_subset(name, values, allowed):
    if not values or len(set(values)) != len(values) or not set(values) <= set(allowed):
        raise ValueError(f"ClassicConfig.{name} = {values!r}: must be a non-empty subset of {allowed}")


def class_weight(name: str, n_classes: int):
    """scikit-learn's ``class_weight`` for a :data:`CLASS_WEIGHTS` name, for label codes 0 … n_classes − 1."""
    weights = CLASS_WEIGHTS[name]
    if weights is None or isinstance(weights, str):
        return weights
    if n_classes != len(weights):
        raise ValueError(f"class_weight = {name!r} weighs {len(weights)} classes, the data have {n_classes}")
    return dict(enumerate(weights))


def make_pipeline(config: ClassicConfig, n_classes: int = 5, n_jobs: int = 1):
    """The scikit-learn pipeline of ``config``: StandardScaler, then the seeded classifier."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    weights = class_weight(config.class_weight, n_classes)
    if config.classifier == "rf":
        model = RandomForestClassifier(n_estimators=config.n_estimators, max_features=config.max_features,
                                       max_depth=config.max_depth, class_weight=weights,
                                       random_state=config.seed, n_jobs=n_jobs)
    else:
        model = SVC(kernel="rbf", C=config.C, gamma=config.gamma, class_weight=weights,
                    random_state=config.seed, cache_size=500)
    return Pipeline([("scale", StandardScaler()), ("classify", model)])


class ClassicModel:
    """A fitted classic pipeline, able to classify raw 8-bit frames.

    Attributes
    ----------
    config : ClassicConfig
    pipeline : sklearn.pipeline.Pipeline
    classes : tuple of str
    dataset_hash : str
        Content hash of the set it was trained on.
    vocabulary : diffranb.features.Vocabulary or None
        The SIFT words (SIFT pipelines only).
    mask : (M, N) bool or None
        The detector mask of the spot statistics (:func:`diffranb.features.detector_mask`), learnt from the
        training frames of the set it was trained on (spot pipelines only; None in models saved before masks).
    info : dict
        What ``model.json`` records besides (training split and size, fit time).
    """

    kind = "classic"

    def __init__(self, config, pipeline, classes, dataset_hash, vocabulary=None, info=None, mask=None):
        self.config, self.pipeline, self.classes = config, pipeline, tuple(classes)
        self.dataset_hash, self.vocabulary, self.info = dataset_hash, vocabulary, dict(info or {})
        self.mask = mask

    def _feature_params(self) -> dict:
        params = self.config.feature_params()
        return params | {"mask": self.mask} if self.config.extractor == "spots" else params

    def transform(self, images8) -> np.ndarray:
        """Features of a (n, M, N) uint8 batch, as the pipeline expects them."""
        params = self._feature_params()
        if self.config.extractor == "sift":
            params = {"vocabulary": self.vocabulary}
        return features.extract(self.config.extractor, images8, **params)

    def feature_key(self) -> tuple:
        """What the features of :meth:`transform` depend on, hashable: two models with the same key compute the
        same features from the same frames (a stacked model of both extracts them once)."""
        params = self.config.feature_params()
        key = (self.config.extractor, repr(sorted(params.items())))
        if self.config.extractor == "spots":
            key += (features.mask_digest(self.mask),)
        if self.config.extractor == "sift":
            key += (hashlib.sha256(np.ascontiguousarray(self.vocabulary.centres).tobytes()).hexdigest(),)
        return key

    def predict(self, images8) -> np.ndarray:
        """Label codes of a (n, M, N) uint8 batch, (n,) int64."""
        return self.pipeline.predict(self.transform(images8)).astype(np.int64)

    def decision(self, x) -> np.ndarray:
        """An SVM pipeline's one-vs-rest decision values for features ``x`` (:meth:`transform`), (n, n_classes)
        float64 in the order of :attr:`classes` (0 for a class the training frames did not hold): scikit-learn's
        vote counts of the one-vs-one classifiers, shifted by their confidences; the largest is the class
        :meth:`predict` gives, except where votes tie (``predict`` then takes the first of the tied classes).
        Forests have no decision values (``ValueError``)."""
        from .evaluate import class_columns

        if self.config.classifier != "svm":
            raise ValueError(f"{self.config.label()}: decision values are an SVM's; a forest has vote shares "
                             "(scores)")
        values = np.asarray(self.pipeline.decision_function(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        if values.ndim == 1:  # two classes: one decision, positive for the second
            values = np.stack([-values, values], axis=1)
        return class_columns(values, self.pipeline.classes_, self.classes)

    def scores(self, images8) -> np.ndarray:
        """Class probabilities of a (n, M, N) uint8 batch, (n, n_classes) float64 in the order of
        :attr:`classes` (0 for a class the training frames did not hold): a forest's vote shares. The SVMs here
        are fitted without probability estimates, so an SVM pipeline gives its decision as 1 for the class it
        predicts and 0 for the others."""
        return self.scores_of(self.transform(images8))

    def scores_of(self, x) -> np.ndarray:
        """:meth:`scores` from features ``x`` already extracted (:meth:`transform`)."""
        from .evaluate import class_columns

        codes = self.pipeline.classes_
        if hasattr(self.pipeline[-1], "predict_proba"):
            proba = self.pipeline.predict_proba(x)
        else:
            proba = (self.pipeline.predict(x)[:, None] == codes[None, :]).astype(np.float64)
        return class_columns(proba, codes, self.classes)

    def predict_dataset(self, ds, indices, *, cache_dir=None, workers: int = 2, progress: bool = False):
        """Label codes of frames ``indices`` of an open data set, from its cached features (extracted in
        parallel if they are not yet on disk); equal to :meth:`predict` on the same frames."""
        store = features.FeatureStore(ds.path, cache_dir, workers=workers, progress=progress)
        indices = np.asarray(indices, dtype=np.int64)
        if self.config.extractor == "sift":
            descriptors, offsets = store.descriptors()
            mine = [np.arange(offsets[i], offsets[i + 1]) for i in indices]
            counts = np.array([len(m) for m in mine], dtype=np.int64)
            x = self.vocabulary.histograms(descriptors[np.concatenate(mine + [np.zeros(0, np.int64)])],
                                           np.concatenate([[0], np.cumsum(counts)]))
            return self.pipeline.predict(np.asarray(x, dtype=np.float64)).astype(np.int64)
        x = store.features(self.config.extractor, **self._feature_params())
        return self.pipeline.predict(np.asarray(x[indices], dtype=np.float64)).astype(np.int64)


def train(config: ClassicConfig, store, *, split: str = "train", n_jobs: int = 2) -> ClassicModel:
    """Fit ``config`` on one split of a data set.

    Parameters
    ----------
    config : ClassicConfig
    store : diffranb.features.FeatureStore
        The data set's features (extracted now if not cached).
    split : str
        Frames to fit on (DiffraNet: ``"train"``; ``"val"`` chooses hyperparameters, ``"test"`` reports).
    n_jobs : int
        Processes of the random forest.
    """
    idx = store.indices(split)
    x = np.asarray(store.features(config.extractor, **config.feature_params())[idx], dtype=np.float64)
    pipeline = make_pipeline(config, len(store.classes), n_jobs=n_jobs)
    start = time.perf_counter()
    pipeline.fit(x, store.labels[idx])
    info = {"trained_on": split, "n_train": int(len(idx)), "fit_seconds": time.perf_counter() - start}
    vocab = store.vocabulary(config.words, config.seed) if config.extractor == "sift" else None
    mask = store.mask() if config.extractor == "spots" else None
    if mask is not None:
        info["masked_pixels"] = int(mask.sum())
    return ClassicModel(config, pipeline, store.classes, store.content_sha256, vocab, info, mask)


def save_model(model: ClassicModel, path) -> Path:
    """Write ``model`` as a directory: ``model.json``, ``pipeline.skops``, (SIFT) ``vocabulary.npy`` and
    (spots) ``mask.npy``."""
    import skops.io as sio

    from . import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sio.dump(model.pipeline, path / "pipeline.skops")
    if model.vocabulary is not None:
        np.save(path / "vocabulary.npy", model.vocabulary.centres, allow_pickle=False)
    if model.mask is not None:
        np.save(path / "mask.npy", np.asarray(model.mask, dtype=bool), allow_pickle=False)
    info = {"kind": "classic", "classes": list(model.classes), "dataset_hash": model.dataset_hash,
            "diffranb_version": __version__, "config": model.config.to_dict(), "label": model.config.label(),
            "extractor_version": features.EXTRACTOR_VERSIONS[model.config.extractor]}
    (path / "model.json").write_text(json.dumps(info | model.info, indent=2))
    return path


def _check_extractor_version(path: Path, info: dict, extractor: str) -> None:
    """Refuse a model whose features this diffranb no longer computes the same way. A model.json without
    ``extractor_version`` predates the field, which came with version 3 of the spot statistics: it was made
    with an extractor at its first version, or with spot statistics before version 3."""
    now = features.EXTRACTOR_VERSIONS[extractor]
    made = info.get("extractor_version")
    if made is None and now == 1:
        return
    if made != now:
        made = f"version {made}" if made is not None else "an earlier version (model.json does not record it)"
        raise ValueError(f"{str(path)!r}: trained on {extractor} features of {made}; this diffranb computes "
                         f"version {now}: retrain the model")


def load_model(path) -> ClassicModel:
    """Read a directory written by :func:`save_model`; refuses pipelines holding untrusted types."""
    import skops.io as sio

    from .evaluate import read_model_json

    path = Path(path)
    info = read_model_json(path)
    if info["kind"] != "classic":
        raise ValueError(f"{str(path)!r} holds a {info['kind']!r} model, not a classic one")
    file = path / "pipeline.skops"
    untrusted = untrusted_types(file)
    if untrusted:
        raise ValueError(f"{str(path)!r}: the pipeline holds types that are not trusted: {untrusted}")
    # every type is vetted above; skops asks again for those outside its own default list
    pipeline = sio.load(file, trusted=sio.get_untrusted_types(file=file))
    vocab = None
    if (path / "vocabulary.npy").exists():
        vocab = features.Vocabulary(np.load(path / "vocabulary.npy", allow_pickle=False))
    mask = np.load(path / "mask.npy", allow_pickle=False) if (path / "mask.npy").exists() else None
    config = ClassicConfig.from_dict(info["config"])
    _check_extractor_version(path, info, config.extractor)
    if "masked_pixels" in info and mask is None:
        raise FileNotFoundError(f"{str(path)!r}: the model was trained with a detector mask, and mask.npy is missing")
    if mask is not None:
        if config.extractor != "spots":
            raise ValueError(f"{str(path)!r}: a {config.label()} model holds no detector mask, yet mask.npy is there")
        if mask.dtype != bool or mask.ndim != 2 or int(mask.sum()) != info.get("masked_pixels"):
            raise ValueError(f"{str(path / 'mask.npy')!r}: {mask.dtype} of shape {mask.shape} with "
                             f"{int(np.count_nonzero(mask))} pixels set; model.json says a bool frame mask of "
                             f"{info.get('masked_pixels')} pixels")
    extra = {k: v for k, v in info.items() if k not in ("kind", "classes", "dataset_hash", "diffranb_version",
                                                        "config", "label", "extractor_version")}
    return ClassicModel(config, pipeline, info["classes"], info["dataset_hash"], vocab, extra, mask)

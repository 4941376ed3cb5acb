"""Sorting frames with a saved model: what a beamline runs on the frames a detector writes.

:func:`read_frames` reads frames from the files a user has: a set built by ``diffranb generate``, any HDF5
file with a stack of frames, NumPy arrays, or 8-bit and 16-bit PNG / TIFF images (DiffraNet's own form, and
what ``diffranb export`` writes). Raw frames (16-bit) are the detector's ADU and are reduced to the 8-bit
frames the models see by :func:`diffranb.dataset.to_8bit`, the mapping of diffranb's simulated detector.
:func:`sort_frames` gives each frame a class and the model's probabilities; ``diffranb sort`` writes them as
CSV, one row per frame, with a ``diffraction`` column (weak, good or strong: a frame to keep).

A model only knows the detector it was trained on: frames of another detector, or of another size than the
model's, are not what it learnt. A frame size that cannot work is refused before anything is written.
"""

from __future__ import annotations

import csv
import itertools
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: File name endings read as images, one frame per file (8-bit, or 16-bit ADU).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: File name endings read as HDF5.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
#: The classes of a frame worth keeping: a crystal diffracted.
KEEP_CLASSES = ("weak", "good", "strong")


@dataclass(frozen=True)
class Source:
    """Frames of one file: where they are and how many.

    Attributes
    ----------
    path : pathlib.Path
    kind : {"diffranb", "hdf5", "npy", "image"}
    n_frames : int
    shape : tuple of int
        (M, N) of every frame.
    dataset : str or None
        The HDF5 dataset holding the frames.
    indices : numpy.ndarray or None
        The frames of a diffranb set that are read (one split), else all.
    """

    path: Path
    kind: str
    n_frames: int
    shape: tuple
    dataset: str | None = None
    indices: np.ndarray | None = None


def _as_8bit(frames, where: str) -> np.ndarray:
    """8-bit frames from 8-bit or 16-bit (ADU) ones; anything else is refused."""
    from .dataset import to_8bit

    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype == np.uint16:
        return to_8bit(frames)
    raise ValueError(f"{where}: frames of {frames.dtype}; diffranb reads 8-bit frames (uint8) or raw detector "
                     "frames in ADU (uint16)")


def _hdf5_frames(path: Path, dataset: str | None) -> str:
    """The dataset of an HDF5 file that holds its frames: ``dataset`` if given, else its only 2-D or 3-D
    integer array."""
    import h5py

    with h5py.File(path, "r") as f:
        if dataset is not None:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise ValueError(f"{str(path)!r}: no dataset {dataset!r}")
            return dataset
        found = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3)
                     and obj.dtype.kind in "ui" else None)
    if len(found) != 1:
        raise ValueError(f"{str(path)!r}: {len(found)} arrays of frames ({', '.join(found) or 'none'}); name the "
                         "one to sort with --dataset")
    return found[0]


def open_source(path, *, dataset: str | None = None, split: str | None = None) -> Source:
    """What :func:`read_frames` will read of file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        A set built by ``diffranb generate``, another HDF5 file, a ``.npy`` array of one frame (M, N) or of
        frames (n, M, N), or one image (:data:`IMAGE_SUFFIXES`).
    dataset : str, optional
        HDF5 files other than diffranb sets: the dataset of frames (default: the file's only 2-D or 3-D
        integer array).
    split : {"train", "val", "test"}, optional
        diffranb sets only: sort this split (default all frames).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        import h5py

        from .dataset import SPLITS, open_dataset

        try:
            with h5py.File(path, "r") as f:
                is_set = "images" in f and "labels" in f and "split" in f
        except OSError as exc:
            raise ValueError(f"{str(path)!r}: not a readable HDF5 file ({exc})") from None
        if is_set and dataset in (None, "images"):
            with open_dataset(path) as ds:
                indices = np.arange(len(ds)) if split is None else ds.indices(split)
                shape = tuple(ds.images.shape[1:])
            return Source(path, "diffranb", len(indices), shape, "images", indices)
        if split is not None:
            raise ValueError(f"{str(path)!r}: --split is for sets built by diffranb generate; this file is not one"
                             + ("" if split in SPLITS else f" (and the splits are {', '.join(SPLITS)})"))
        name = _hdf5_frames(path, dataset)
        with h5py.File(path, "r") as f:
            shape = f[name].shape
        n, shape = (1, shape) if len(shape) == 2 else (shape[0], shape[1:])
        return Source(path, "hdf5", n, tuple(shape), name)
    if dataset is not None or split is not None:
        raise ValueError(f"{str(path)!r}: --dataset and --split are for HDF5 files")
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{str(path)!r}: not a readable .npy array ({exc})") from None
        if array.ndim not in (2, 3):
            raise ValueError(f"{str(path)!r}: an array of shape {array.shape}; frames are (M, N) or (n, M, N)")
        n, shape = (1, array.shape) if array.ndim == 2 else (array.shape[0], array.shape[1:])
        return Source(path, "npy", n, tuple(shape))
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return Source(path, "image", 1, (image.height, image.width))
        except OSError as exc:
            raise ValueError(f"{str(path)!r}: not a readable image ({exc})") from None
    raise ValueError(f"{str(path)!r}: diffranb sorts HDF5 ({', '.join(HDF5_SUFFIXES)}), .npy and image "
                     f"({', '.join(IMAGE_SUFFIXES)}) files")


@contextmanager
def _reader(source: Source):
    """``read(a, b)``: 8-bit frames ``a`` … ``b`` of ``source``, (b − a, M, N) uint8, the file open
    meanwhile."""
    where = str(source.path)
    if source.kind == "diffranb":
        from .dataset import open_dataset

        with open_dataset(source.path) as ds:
            yield lambda a, b: next(ds.batches(source.indices[a:b], batch_size=b - a))[0]
    elif source.kind == "hdf5":
        import h5py

        with h5py.File(source.path, "r") as f:
            data = f[source.dataset]
            yield lambda a, b: _as_8bit(data[()][None] if data.ndim == 2 else data[a:b],
                                        f"{where}:{source.dataset}")
    elif source.kind == "npy":
        array = np.load(source.path, mmap_mode="r")
        yield lambda a, b: _as_8bit(np.array(array[None] if array.ndim == 2 else array[a:b]), where)
    else:
        yield lambda a, b: _read_image(source.path)


def _read_image(path: Path) -> np.ndarray:
    """One greyscale image file as a (1, M, N) uint8 frame (a 16-bit one is ADU)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{str(path)!r}: a {image.mode} image; diffranb reads greyscale frames (8-bit, or "
                             "16-bit ADU)")
        frame = np.array(image)
    if frame.dtype != np.uint8:
        if frame.min() < 0 or frame.max() > 65535:
            raise ValueError(f"{str(path)!r}: values outside 0 … 65535; not a 16-bit detector frame")
        frame = frame.astype(np.uint16)
    return _as_8bit(frame[None], str(path))


def check_frame_size(model, shape, where: str = "frames") -> None:
    """Refuse frames of size ``shape`` (M, N) that ``model`` cannot sort: a spot model's detector mask has the
    size of its training frames; a network needs frames that bin to its input (those frames, or up to
    ``binning − 1`` pixels larger); a stacked model, what each member needs. Texture features run on any
    size."""
    members = getattr(model, "members", None)
    if members is not None:
        for m in members:
            check_frame_size(m, shape, where)
        return
    shape = tuple(int(n) for n in shape)
    mask = getattr(model, "mask", None)
    if mask is not None:
        need = tuple(mask.shape)
        ok = shape == need
    elif getattr(model, "kind", None) == "deepfreak":
        need = tuple(int(n) * model.binning for n in model.mean.shape)
        ok = tuple(n // model.binning for n in shape) == model.mean.shape
    else:
        return
    if not ok:
        raise ValueError(f"{where}: frames of {shape[0]}×{shape[1]} pixels; the model was trained on "
                         f"{need[0]}×{need[1]}")


def expand_inputs(paths) -> list[Path]:
    """Files to sort, in order: each file as given, and the images and ``.npy`` / HDF5 files under each
    directory (recursively, sorted by path)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file()
                           and q.suffix.lower() in IMAGE_SUFFIXES + HDF5_SUFFIXES + (".npy",))
            if not found:
                raise ValueError(f"{str(p)!r}: no frames under this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r}: no such file or directory")
    return out


_WORKER = {}


def _init_worker(model_dir, sources):
    from .evaluate import load_model
    from .threads import set_threads

    _WORKER.update(model=load_model(model_dir), sources=sources)
    set_threads(1, 1, 1)  # one core per process, torch included (loaded with a network)


def _scores_of(task):
    k, a, b = task
    with _reader(_WORKER["sources"][k]) as read:
        return np.asarray(_WORKER["model"].scores(read(a, b)))


def sort_frames(model, sources, *, batch_size: int = 32, progress: bool = True, workers: int = 1,
                model_dir=None):
    """Classify every frame of ``sources``, batch by batch, in order.

    Parameters
    ----------
    model
        A loaded model (:func:`diffranb.evaluate.load_model`).
    sources : list of Source
        From :func:`open_source`; their frame sizes are checked against the model's before any is read.
    batch_size : int
        Frames handed to the model per call.
    workers : int
        Processes that read and classify batches, one thread each; 1: this process, with the threads it has.
    model_dir : str or os.PathLike
        With ``workers`` > 1: the directory ``model`` was loaded from, which each process loads.

    Yields
    ------
    source : Source
    frames : (b,) int64
        The frames' indices in their source (in a diffranb set: the set's frame index).
    scores : (b, n_classes) float
        The model's class probabilities, in the order of ``model.classes`` (a classic SVM's are 0/1 votes).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be at least 1")
    if workers < 1:
        raise ValueError(f"workers = {workers}: must be at least 1")
    if workers > 1 and model_dir is None:
        raise ValueError("workers > 1: give model_dir, the saved model each process loads")
    for source in sources:
        check_frame_size(model, source.shape, repr(str(source.path)))
    tasks = [(k, a, min(a + batch_size, s.n_frames)) for k, s in enumerate(sources)
             for a in range(0, s.n_frames, batch_size)]
    with tqdm(total=sum(s.n_frames for s in sources), unit="frame", desc="sorting", disable=not progress) as bar:
        if workers == 1:
            def scores():
                for k, group in itertools.groupby(tasks, key=lambda t: t[0]):
                    with _reader(sources[k]) as read:
                        for _, a, b in group:
                            yield np.asarray(model.scores(read(a, b)))

            results = scores()
            pool = None
        else:
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                       initargs=(str(model_dir), list(sources)))
            results = pool.map(_scores_of, tasks)
        try:
            for (k, a, b), p in zip(tasks, results):
                source = sources[k]
                yield source, (source.indices[a:b] if source.indices is not None else np.arange(a, b)), p
                bar.update(b - a)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def write_csv(model, sources, out, *, batch_size: int = 32, progress: bool = True, workers: int = 1,
              model_dir=None) -> dict:
    """Sort ``sources`` (:func:`sort_frames`, with ``batch_size``, ``workers`` and ``model_dir``) and write one
    CSV row per frame to ``out``: ``file``, ``frame``, ``label``, ``diffraction`` (1 for :data:`KEEP_CLASSES`),
    and ``p_<class>`` for each of the model's classes.

    The rows go to a temporary file beside ``out``, renamed to ``out`` once every frame is sorted: an error
    half-way leaves no partial file, and an existing ``out`` is refused before anything runs.

    Returns
    -------
    dict
        ``frames``, ``seconds``, ``frames_per_s``, ``counts`` (frames per class) and ``kept`` (diffraction
        frames).
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {str(out)!r} exists: refusing to overwrite it")
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: its directory does not exist")
    classes = list(model.classes)
    keep = np.array([c in KEEP_CLASSES for c in classes])
    counts = dict.fromkeys(classes, 0)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    start, n = time.perf_counter(), 0
    try:
        with open(partial, "w", newline="") as handle:
            rows = csv.writer(handle)
            rows.writerow(["file", "frame", "label", "diffraction"] + [f"p_{c}" for c in classes])
            for source, index, scores in sort_frames(model, sources, batch_size=batch_size, progress=progress,
                                                     workers=workers, model_dir=model_dir):
                best = scores.argmax(axis=1)
                for i, k, p in zip(index, best, scores):
                    rows.writerow([str(source.path), int(i), classes[k], int(keep[k])] + [f"{v:.6g}" for v in p])
                    counts[classes[k]] += 1
                n += len(index)
        seconds = time.perf_counter() - start
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    kept = sum(counts[c] for c in classes if c in KEEP_CLASSES)
    return {"frames": n, "seconds": seconds, "frames_per_s": n / seconds if seconds > 0 else float("nan"),
            "counts": counts, "kept": kept}

"""Sorting frames with a saved model: what a beamline runs on the frames its detector wrote.

:func:`open_source` opens the files a user has:
- a set built by ``diffranb generate`` (all of it or one split);
- any other HDF5 file with a stack of frames;
- NumPy arrays;
- 8-bit and 16-bit PNG / TIFF images, multi-page TIFFs included. This is the form of DiffraNet's own frames, and
  what ``diffranb export`` writes.

Raw frames (16-bit, either byte order) are the detector's ADU. They are reduced to the 8-bit frames the models
see by :func:`diffranb.dataset.to_8bit`, the mapping of diffranb's simulated detector.

:func:`write_csv` gives each frame a class and the model's probabilities, one CSV row per frame, with a
``diffraction`` column: 1 unless the class is one of :data:`diffranb.evaluate.NO_DIFFRACTION`, as in the binary
accuracy. ``diffranb sort`` is its command line.

A model only knows the detector it was trained on. Frames of another detector, or of another size than the
model's, are not what it learnt. Every file is opened, and its frame size and type checked against the model,
before any frame is sorted.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .evaluate import NO_DIFFRACTION

#: File name endings read as images (8-bit, or 16-bit ADU; a multi-page TIFF holds several frames).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: File name endings read as HDF5.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
#: Image modes (Pillow's) of greyscale frames: 8-bit, 16-bit, and 32-bit integers holding 16-bit values.
IMAGE_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I")


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
        The frames of a diffranb set that are read (one split, increasing), else all.
    swmr : bool
        An HDF5 file a writer holds open in single-writer / multiple-reader mode: read it in that mode (its
        frames are those it held when opened; more may come).
    """

    path: Path
    kind: str
    n_frames: int
    shape: tuple
    dataset: str | None = None
    indices: np.ndarray | None = None
    swmr: bool = False

    def frame_numbers(self, a: int, b: int) -> np.ndarray:
        """What the CSV calls frames ``a`` … ``b`` of this source: a diffranb set's own frame indices, else
        0, 1, … within the file."""
        return self.indices[a:b] if self.indices is not None else np.arange(a, b)


def _check_dtype(dtype, where: str) -> None:
    dtype = np.dtype(dtype)
    if not (dtype.kind == "u" and dtype.itemsize in (1, 2)):
        raise ValueError(f"{where}: frames of {dtype}; diffranb reads 8-bit frames (uint8) or raw detector frames "
                         "in ADU (uint16)")


def _as_8bit(frames, where: str) -> np.ndarray:
    """8-bit frames from 8-bit or 16-bit (ADU, either byte order) ones; anything else is refused."""
    from .dataset import to_8bit

    frames = np.asarray(frames)
    _check_dtype(frames.dtype, where)
    if frames.dtype.itemsize == 1:
        return frames.astype(np.uint8, copy=False)
    return to_8bit(frames.astype(np.uint16, copy=False))


def _frames_shape(shape, where: str) -> tuple[int, tuple]:
    """(number of frames, (M, N)) of an array of one frame (M, N) or of frames (n, M, N)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{where}: an array of shape {shape}; frames are (M, N) or (n, M, N)")
    return (1, shape) if len(shape) == 2 else (shape[0], shape[1:])


def _hdf5_frames(f, path: Path) -> str:
    """The only dataset of open HDF5 file ``f`` that can hold frames: 2-D or 3-D, 8-bit or 16-bit unsigned."""
    import h5py

    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3)
                 and obj.dtype.kind == "u" and obj.dtype.itemsize in (1, 2) else None)
    if len(found) != 1:
        raise ValueError(f"{str(path)!r}: {len(found)} arrays of 8-bit or 16-bit frames "
                         f"({', '.join(found) or 'none'}); name the one to sort with --dataset (frames held in "
                         "other files, through external links, are found only by name)")
    return found[0]


class Busy(ValueError):
    """An HDF5 file that a writer holds open (and locked): it cannot be read until the writer closes it."""


def _held_by_writer(exc: OSError) -> bool:
    """Whether HDF5 refused to open a file because a writer holds it: its lock (EAGAIN), or, where file locking
    is off, the flag a writer leaves in the file while it is open ("already open for write")."""
    import errno

    return isinstance(exc, BlockingIOError) or getattr(exc, "errno", None) == errno.EAGAIN \
        or "already open for write" in str(exc)


def _open_hdf5(path: Path):
    """Open HDF5 file ``path`` to read: (h5py.File, swmr). A file that a writer holds open in SWMR mode is opened
    in that mode (swmr True); one that a writer holds otherwise raises :class:`Busy`."""
    import h5py

    try:
        return h5py.File(path, "r"), False
    except OSError as exc:
        first = exc
    try:  # a writer in SWMR mode refuses other readers ("already open for write")
        return h5py.File(path, "r", swmr=True), True
    except OSError:
        pass
    if _held_by_writer(first):
        raise Busy(f"{str(path)!r}: a writer holds it open; read it once the writer has closed it") from None
    raise first


def open_source(path, *, dataset: str | None = None, split: str | None = None) -> Source:
    """What will be read of file ``path``, checked: its frames' number, size and type.

    Parameters
    ----------
    path : str or os.PathLike
        A set built by ``diffranb generate``, another HDF5 file, a ``.npy`` array of one frame (M, N) or of
        frames (n, M, N), or an image (:data:`IMAGE_SUFFIXES`).
    dataset : str, optional
        HDF5 files other than diffranb sets: the dataset of frames (default: the file's only 2-D or 3-D array
        of 8-bit or 16-bit frames). Not used for other files.
    split : {"train", "val", "test"}, optional
        diffranb sets: sort this split only (default all frames). Not used for images and arrays; an HDF5 file
        that is not a diffranb set is refused.

    An HDF5 file that a writer holds open in SWMR mode is opened in that mode (:attr:`Source.swmr`: its frames
    so far); one that a writer holds open otherwise raises :class:`Busy`, a ``ValueError``.
    """
    import h5py

    from .dataset import SPLITS, open_dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no such file")
    where = repr(str(path))
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        try:
            f, swmr = _open_hdf5(path)
            with f:
                is_set = all(name in f for name in ("images", "labels", "split")) and dataset in (None, "images")
                if not is_set and split is not None:
                    raise ValueError(f"{where}: --split is for sets built by diffranb generate; this file is not "
                                     "one" + ("" if split in SPLITS else f" (and the splits are {', '.join(SPLITS)})"))
                if not is_set:
                    name = dataset if dataset is not None else _hdf5_frames(f, path)
                    if name not in f or not isinstance(f[name], h5py.Dataset):
                        raise ValueError(f"{where}: no dataset {name!r}")
                    _check_dtype(f[name].dtype, f"{where}:{name}")
                    n, shape = _frames_shape(f[name].shape, f"{where}:{name}")
        except Busy:
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{where}: not a readable HDF5 file ({exc})") from None
        if is_set:
            with open_dataset(path) as ds:
                indices = np.arange(len(ds)) if split is None else ds.indices(split)
                return Source(path, "diffranb", len(indices), tuple(ds.images.shape[1:]), "images", indices)
        return Source(path, "hdf5", n, shape, name, swmr=swmr)
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{where}: not a readable .npy array ({exc or 'empty file'})") from None
        _check_dtype(array.dtype, where)
        n, shape = _frames_shape(array.shape, where)
        return Source(path, "npy", n, shape)
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(path) as image:
                mode, size, pages = image.mode, (image.height, image.width), getattr(image, "n_frames", 1)
        except OSError as exc:
            raise ValueError(f"{where}: not a readable image ({exc})") from None
        if mode not in IMAGE_MODES:
            raise ValueError(f"{where}: a {mode} image; diffranb reads greyscale frames (8-bit, or 16-bit ADU): "
                             "convert it to greyscale first")
        return Source(path, "image", pages, size)
    raise ValueError(f"{where}: diffranb sorts HDF5 ({', '.join(HDF5_SUFFIXES)}), .npy and image "
                     f"({', '.join(IMAGE_SUFFIXES)}) files")


def _read(source: Source, a: int, b: int) -> np.ndarray:
    """8-bit frames ``a`` … ``b`` of ``source``, (b − a, M, N) uint8."""
    where = repr(str(source.path))
    try:
        if source.kind == "diffranb":
            from .dataset import open_dataset, read_frames

            with open_dataset(source.path) as ds:
                return _as_8bit(read_frames(ds.images, source.indices[a:b]), where)
        if source.kind == "hdf5":
            import h5py

            with h5py.File(source.path, "r", swmr=source.swmr) as f:
                data = f[source.dataset]
                return _as_8bit(data[()][None] if data.ndim == 2 else data[a:b], f"{where}:{source.dataset}")
        if source.kind == "npy":
            array = np.load(source.path, mmap_mode="r")
            return _as_8bit(np.array(array[None] if array.ndim == 2 else array[a:b]), where)
        return _read_pages(source, a, b)
    except OSError as exc:
        if source.kind == "hdf5" and _held_by_writer(exc):
            raise Busy(f"{where}: a writer holds it open; frames {a} … {b - 1} were not read") from None
        raise ValueError(f"{where}: could not read frames {a} … {b - 1} ({exc})") from None
    except (KeyError, RuntimeError) as exc:  # h5py: the dataset gone or the file changed since it was opened
        raise ValueError(f"{where}: could not read frames {a} … {b - 1} ({type(exc).__name__}: {exc})") from None


def _read_pages(source: Source, a: int, b: int) -> np.ndarray:
    """Pages ``a`` … ``b`` of an image file as 8-bit frames (b − a, M, N), the file opened once (16-bit pages
    are ADU)."""
    from PIL import Image

    where = repr(str(source.path))
    frames = []
    with Image.open(source.path) as image:
        for k in range(a, b):
            image.seek(k)
            if image.mode not in IMAGE_MODES or (image.height, image.width) != source.shape:
                raise ValueError(f"{where}: page {k} is a {image.mode} image of {image.height}×{image.width}; "
                                 f"the first is a greyscale frame of {source.shape[0]}×{source.shape[1]}")
            frame = np.array(image)
            if frame.dtype.itemsize > 2 or frame.dtype.kind == "i":
                if frame.size and (frame.min() < 0 or frame.max() > 65535):
                    raise ValueError(f"{where}: values outside 0 … 65535; not a 16-bit detector frame")
                frame = frame.astype(np.uint16)
            frames.append(_as_8bit(frame, where))
    return np.stack(frames)


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
                         f"{need[0]}×{need[1]}: sort them with a model trained on frames of their size")


def _walk(directory, suffixes) -> list[str]:
    """Files under ``directory`` (recursively) whose names end in one of ``suffixes``, as paths: hidden files
    and directories (a writer's temporary names, an rsync staging directory) and symbolic links are left out."""
    found, todo = [], [str(directory)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
            elif entry.name.lower().endswith(suffixes):
                found.append(str(Path(entry.path)))  # as Source.path names it ("./a.h5" is "a.h5")
    return found


def expand_inputs(paths) -> list[Path]:
    """Files to sort, in order: each file as given, and the images and HDF5 files under each directory
    (:func:`_walk`, sorted by path; ``.npy`` files are taken only when named, as a directory may hold other
    arrays)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(Path(q) for q in _walk(p, IMAGE_SUFFIXES + HDF5_SUFFIXES))
            if not found:
                raise ValueError(f"{str(p)!r}: no images or HDF5 files under this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r}: no such file or directory")
    return out


def _tasks(sources, batch_size: int, starts=None) -> list[list[tuple[int, int, int]]]:
    """The sources' frames in calls of ``batch_size``: each call a list of pieces (source number, a, b), so
    that files of one frame each are still handed over ``batch_size`` at a time. ``starts``: the first frame
    of each source to take (default 0), and it ends at its ``n_frames``."""
    tasks, current, filled = [], [], 0
    for k, source in enumerate(sources):
        a = 0 if starts is None else starts[k]
        while a < source.n_frames:
            b = min(a + batch_size - filled, source.n_frames)
            current.append((k, a, b))
            filled, a = filled + b - a, b
            if filled == batch_size:
                tasks.append(current)
                current, filled = [], 0
    return tasks + [current] if current else tasks


def _scores(model, sources, task) -> np.ndarray:
    return np.asarray(model.scores(np.concatenate([_read(sources[k], a, b) for k, a, b in task])))


_WORKER = {}


def _init_worker(model_dir, sources=None):
    """A sorting process: Ctrl-C left to the main process, the model loaded, one thread."""
    from .evaluate import load_model
    from .threads import set_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the pool on Ctrl-C
    _WORKER.update(model=load_model(model_dir), sources=sources)
    set_threads(1, 1, 1)  # one core per process, torch included (loaded with a network)


def _worker_scores(task):
    return _scores(_WORKER["model"], _WORKER["sources"], task)


def sort_frames(model, sources, *, batch_size: int = 32, progress: bool = True, workers: int = 1,
                model_dir=None):
    """Classify every frame of ``sources``, ``batch_size`` frames per call of the model, in order.

    Parameters
    ----------
    model
        A loaded model (:func:`diffranb.evaluate.load_model`).
    sources : list of Source
        From :func:`open_source`; their frame sizes are checked against the model's before any is read.
    batch_size : int
        Frames handed to the model per call, across files (a folder of one-frame images is sorted in batches
        too).
    workers : int
        Processes that read and classify batches, one thread each; 1: this process, with the threads it has.
        A forest's or an SVM's output does not depend on it. A network's probabilities may differ in their
        last digits with the number of threads it runs on, and so may the class of a frame at a near-tie.
    model_dir : str or os.PathLike
        With ``workers`` > 1: the directory ``model`` was loaded from, which each process loads.

    Yields
    ------
    source : Source
    frames : (b,) int64
        The frames' numbers (:meth:`Source.frame_numbers`).
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
    tasks = _tasks(sources, batch_size)
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(str(model_dir), list(sources)))
        results = pool.map(_worker_scores, tasks)
    else:
        results = (_scores(model, sources, task) for task in tasks)
    try:
        with tqdm(total=sum(s.n_frames for s in sources), unit="frame", desc="sorting",
                  disable=not progress) as bar:
            for task, scores in zip(tasks, results):
                start = 0
                for k, a, b in task:
                    yield sources[k], sources[k].frame_numbers(a, b), scores[start:start + b - a]
                    start += b - a
                bar.update(start)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


class _Rows:
    """CSV rows of sorted frames (``file``, ``frame``, ``label``, ``diffraction``, ``p_<class>``), written to an
    open text file as they come, and the frames of each class."""

    def __init__(self, handle, classes):
        self.classes = list(classes)
        self.keep = np.array([c not in NO_DIFFRACTION for c in self.classes])
        self.counts = dict.fromkeys(self.classes, 0)
        self.writer = csv.writer(handle)
        self.writer.writerow(["file", "frame", "label", "diffraction"] + [f"p_{c}" for c in self.classes])

    def add(self, source: Source, index, scores) -> None:
        for i, k, p in zip(index, scores.argmax(axis=1), scores):
            self.writer.writerow([str(source.path), int(i), self.classes[k], int(self.keep[k])]
                                 + [f"{v:.6g}" for v in p])
            self.counts[self.classes[k]] += 1

    def summary(self) -> dict:
        """``frames``, ``counts`` (frames per class) and ``kept`` (diffraction frames)."""
        return {"frames": sum(self.counts.values()), "counts": dict(self.counts),
                "kept": sum(n for c, n in self.counts.items() if c not in NO_DIFFRACTION)}


def _refuse_existing(out: Path) -> None:
    if out.exists():
        raise ValueError(f"{str(out)!r} exists: refusing to overwrite it; choose another name or remove it")


def write_csv(model, sources, out, *, batch_size: int = 32, progress: bool = True, workers: int = 1,
              model_dir=None) -> dict:
    """Sort ``sources`` (:func:`sort_frames`, with ``batch_size``, ``workers`` and ``model_dir``) and write one
    CSV row per frame to ``out``: ``file``, ``frame``, ``label``, ``diffraction`` (0 for
    :data:`diffranb.evaluate.NO_DIFFRACTION`, else 1), and ``p_<class>`` for each of the model's classes.

    The rows go to a temporary file beside ``out``, which becomes ``out`` once every frame is sorted. An error
    half-way leaves no file. An existing ``out`` is refused before anything runs. If a file of that name
    appears while sorting, it is kept, and so are the rows: the error names the file that holds them.

    Returns
    -------
    dict
        ``frames``, ``seconds``, ``frames_per_s``, ``counts`` (frames per class) and ``kept`` (diffraction
        frames).
    """
    out = Path(out)
    _refuse_existing(out)
    try:
        fd, partial = tempfile.mkstemp(dir=out.resolve().parent, prefix=f".{out.name}.", suffix=".partial")
    except OSError as exc:
        raise ValueError(f"{str(out)!r}: cannot write there ({exc})") from None
    start, placed = time.perf_counter(), False
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            rows = _Rows(handle, model.classes)
            for piece in sort_frames(model, sources, batch_size=batch_size, progress=progress, workers=workers,
                                     model_dir=model_dir):
                rows.add(*piece)
        seconds = time.perf_counter() - start
        try:
            os.link(partial, out)  # fails if out exists by now: never replaces it
            placed = True
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not out.exists():
                os.replace(partial, out)
                placed = True
        if not placed:
            partial_kept = partial
            partial = None
            raise ValueError(f"{str(out)!r} appeared while sorting: left as it is; the rows are in "
                             f"{partial_kept!r}")
    finally:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
    result = rows.summary()
    return result | {"seconds": seconds, "frames_per_s": result["frames"] / seconds if seconds > 0 else float("nan")}


#: What a followed directory is watched for: files of frames a detector writes one by one (images and raw
#: ``.npy`` frames: every ``.npy`` file under the directory is taken as frames), and HDF5 files, which grow.
FOLLOW_SUFFIXES = IMAGE_SUFFIXES + (".npy",) + HDF5_SUFFIXES


def _grows(path: str) -> bool:
    """Whether a followed file may gain frames after it was first sorted: HDF5 files do."""
    return path.lower().endswith(HDF5_SUFFIXES)


class _Watch:
    """What a followed directory holds. A file is *ready* once its size and modification time have held for
    ``settle_s`` seconds. An image or ``.npy`` file is taken once; an HDF5 file is offered again each time it
    has changed and held still again. ``changed`` says whether anything new or changed was seen in the last
    listing."""

    def __init__(self, directory, settle_s: float):
        self.directory, self.settle_s = directory, settle_s
        self.seen = {}  # path -> ((size, mtime), first seen with them)
        self.taken = {}  # path -> (size, mtime) when taken; images and arrays are not looked at again
        self.waiting = {}  # path -> (size, mtime): offered again once held still, without counting as a change
        self.changed = False

    def ready(self) -> list[str]:
        now, ready, seen = time.monotonic(), [], {}
        self.changed = False
        for path in _walk(self.directory, FOLLOW_SUFFIXES):
            taken = self.taken.get(path)
            if taken is not None and not _grows(path):
                continue
            try:
                stat = os.stat(path)
            except OSError:  # removed meanwhile
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if stat.st_size == 0 or key == taken:
                continue
            before = self.seen.get(path)
            if before is not None and before[0] == key:
                seen[path] = before
            elif self.waiting.get(path) == key:  # offered again, unchanged: the wait starts now
                seen[path] = (key, now)
            else:
                seen[path] = (key, now)
                self.changed = True
            if now - seen[path][1] >= self.settle_s:
                ready.append(path)
        self.seen, self.waiting = seen, {}
        ready.sort(key=lambda p: (seen[p][0][1], p))
        for path in ready:
            self.taken[path] = seen.pop(path)[0]
        return ready

    def again(self, path: str) -> None:
        """Offer ``path`` again once it has held still for another ``settle_s``: it could not be read yet, or
        its writer still holds it. That is not a change: the idle timer runs on."""
        key = self.taken.pop(path, None)
        if key is not None:
            self.waiting[path] = key

    def growing(self) -> list[str]:
        """Files seen but not yet ready."""
        return sorted(self.seen)


#: Seconds a followed HDF5 file is waited for when a writer opens it again between its listing and its
#: reading (an appender), tried again after each of these.
BUSY_RETRY_S = (0.1, 0.3, 1.0, 3.0)


def _read_patiently(source: Source, a: int, b: int) -> np.ndarray:
    """:func:`_read`, trying again while a writer holds the file open for a short while (:data:`BUSY_RETRY_S`)."""
    for wait in BUSY_RETRY_S + (None,):
        try:
            return _read(source, a, b)
        except Busy:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def _follow_batch(model, job) -> tuple[list, np.ndarray | None, list]:
    """Read and score one call's pieces ``(source, a, b)``, leaving out the pieces that cannot be read: (pieces
    read, their scores or None, [(source, a, reason)] of the others)."""
    frames, read, failed = [], [], []
    for source, a, b in job:
        try:
            frames.append(_read_patiently(source, a, b))
            read.append((source, a, b))
        except (ValueError, OSError) as exc:
            failed.append((source, a, str(exc)))
    return read, (np.asarray(model.scores(np.concatenate(frames))) if frames else None), failed


def _follow_worker(job):
    return _follow_batch(_WORKER["model"], job)


class _Now:
    """A result already computed, with the interface of a finished future."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def follow(model, directory, out, *, batch_size: int = 32, poll_s: float = 0.5, idle_timeout_s: float | None = None,
           progress: bool = True, warn=None, workers: int = 1, model_dir=None, on_ready=None,
           dataset: str | None = None) -> dict:
    """Sort the frames of files as they appear under ``directory``, as a beamline sorts a running experiment,
    and append one CSV row per frame to ``out`` (the columns of :func:`write_csv`), flushed after every call of
    the model.

    The directory is listed every ``poll_s`` seconds, recursively (:func:`_walk`: hidden files and directories
    and symbolic links are left out). Files already there are sorted first. A file is taken once its size and
    modification time have held for ``poll_s`` seconds (on a network file system, whose cached attributes may
    lag, give a longer ``poll_s``). An image or ``.npy`` file is taken only once: rewritten afterwards, it is not
    sorted again. Frames go to the model at most ``batch_size`` at a time, across files. A file that cannot be
    read, or whose frames the model cannot take, is reported through ``warn`` and skipped; the run goes on.

    HDF5 files grow as a detector writes them, and each of their frames is sorted once:
    - a file that a writer holds open (locked) is left until it is closed; it does not keep the run from
      ending idle;
    - a file that a writer holds open in single-writer / multiple-reader (SWMR) mode is read as it grows: at
      each listing, the frames it already held at the listing before (a poll's time for the writer to finish
      writing them);
    - whenever a closed file has held still for ``poll_s``, the frames it holds beyond those already sorted
      are taken, so a file appended to later is read in pieces; a writer that opens it again just then is
      waited for a few seconds (:data:`BUSY_RETRY_S`) before its frames are reported as not sorted;
    - a file that holds fewer frames than were sorted was rewritten: it is reported, and not read again.

    The run ends on Ctrl-C, or once nothing new or changed has been seen and nothing sorted for
    ``idle_timeout_s`` seconds; files still changing then are reported. The rows written so far stay.

    Parameters
    ----------
    model
        A loaded model (:func:`diffranb.evaluate.load_model`).
    directory : str or os.PathLike
        Watched for :data:`FOLLOW_SUFFIXES`.
    out : str or os.PathLike
        The CSV; it must not exist (it is never overwritten).
    batch_size : int
    poll_s : float, seconds
    idle_timeout_s : float, seconds, optional
        Default: run until Ctrl-C.
    warn : callable, optional
        Called with a message for each file skipped (default: :func:`warnings.warn`).
    workers : int
        Processes of one thread each that read and score the calls, in turn (1: this process, with its
        threads). Rows are written in the order the files were taken either way.
    model_dir : str or os.PathLike
        With ``workers`` > 1: the directory ``model`` was loaded from, which each process loads.
    on_ready : callable, optional
        Called without arguments once the processes have loaded the model and the CSV's header is written.
    dataset : str, optional
        The dataset of frames in HDF5 files (default: each file's only array of frames, :func:`open_source`).

    Returns
    -------
    dict
        ``frames``, ``files``, ``skipped`` (file → reason), ``seconds``, ``counts`` (frames per class),
        ``kept`` (diffraction frames) and ``stopped`` ("idle" or "interrupted").
    """
    import collections
    import math
    import multiprocessing as mp
    import warnings
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import wait as futures_wait

    from tqdm.auto import tqdm

    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise ValueError(f"{str(directory)!r}: not a directory to follow")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be at least 1")
    if workers < 1 or (workers > 1 and model_dir is None):
        raise ValueError(f"workers = {workers}: must be at least 1, and above 1 with model_dir, the saved model "
                         "each process loads")
    for name, value in (("poll_s", poll_s), ("idle_timeout_s", idle_timeout_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} = {value}: must be a finite number of seconds > 0")
    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    _refuse_existing(out)
    try:
        handle = open(out, "x", newline="")
    except OSError as exc:
        raise ValueError(f"{str(out)!r}: cannot write there ({exc})") from None
    watch, skipped, files = _Watch(directory, poll_s), {}, set()
    done, live = {}, {}  # HDF5 file -> frames taken; -> frames it held at the last listing, while written (SWMR)
    start = last_active = time.monotonic()
    stopped = "idle"

    def skip(path, reason):
        if str(path) not in skipped:
            skipped[str(path)] = reason
            warn(f"skipped: {reason}")

    def write(result) -> int:
        read, scores, failed = result
        for source, a, reason in failed:
            skip(source.path, reason + (f" (frames before {a} were sorted)" if a else ""))
        at = 0
        for source, a, b in read:
            rows.add(source, source.frame_numbers(a, b), scores[at:at + b - a])
            files.add(str(source.path))
            at += b - a
        handle.flush()
        return at

    pool = None if workers == 1 else ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(str(model_dir),))
    pending = collections.deque()
    with handle, tqdm(unit="frame", desc="following", disable=not progress) as bar:
        rows = _Rows(handle, model.classes)
        handle.flush()
        try:
            if pool is not None:  # every process up, its model loaded, before the first file is taken
                for future in [pool.submit(_follow_worker, []) for _ in range(workers)]:
                    future.result()
            last_active = time.monotonic()  # the idle timer starts once the processes are up
            if on_ready is not None:
                on_ready()
            def take(source, n):  # frames done[path] … n of source
                path = str(source.path)
                first = done.get(path, 0)
                if n > first:
                    sources.append(dataclasses.replace(source, n_frames=n))
                    starts.append(first)
                    done[path] = n

            def take_live(path, source):  # its writer holds it in SWMR mode: the frames held a listing ago
                before, live[path] = live.get(path), source.n_frames
                if before is not None:
                    take(source, min(before, source.n_frames))

            while True:
                sources, starts = [], []
                for path in watch.ready():
                    if path in skipped:
                        continue
                    try:
                        source = open_source(path, dataset=dataset)
                        check_frame_size(model, source.shape, repr(path))
                    except Busy:
                        watch.again(path)
                        continue
                    except (ValueError, OSError) as exc:
                        skip(path, str(exc))
                        continue
                    if source.swmr:  # held still, but its writer may add frames at any moment
                        watch.again(path)
                        take_live(path, source)
                        continue
                    live.pop(path, None)
                    if source.n_frames < done.get(path, 0):
                        skip(path, f"{path!r}: holds {source.n_frames} frames, fewer than the {done[path]} sorted: "
                                   "rewritten, and not sorted again")
                    elif source.n_frames == 0 and not _grows(path):
                        skip(path, f"{path!r}: no frames")
                    else:
                        take(source, source.n_frames)
                for path in watch.growing():
                    if not _grows(path) or path in skipped:
                        continue
                    try:
                        source = open_source(path, dataset=dataset)
                    except (ValueError, OSError):  # held by its writer, or half-written: taken once it holds still
                        continue
                    if source.swmr:
                        try:
                            check_frame_size(model, source.shape, repr(path))
                        except ValueError as exc:
                            skip(path, str(exc))
                            continue
                        take_live(path, source)
                for task in _tasks(sources, batch_size, starts):
                    job = [(sources[k], a, b) for k, a, b in task]
                    pending.append(pool.submit(_follow_worker, job) if pool else _Now(_follow_batch(model, job)))
                    while pending and pending[0].done():  # in the order taken
                        bar.update(write(pending.popleft().result()))
                while pending and pending[0].done():
                    bar.update(write(pending.popleft().result()))
                if sources or watch.changed or pending:
                    last_active = time.monotonic()
                elif idle_timeout_s is not None and time.monotonic() - last_active >= idle_timeout_s:
                    break
                if pending:  # the processes are sorting: back as soon as the oldest call is done
                    futures_wait([pending[0]], timeout=poll_s)
                else:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            if pool is not None:
                pool.shutdown(wait=stopped != "interrupted", cancel_futures=stopped == "interrupted")
    for path in watch.growing():
        warn(f"not sorted: {path!r} was still changing, or held open by its writer, when the run stopped"
             + (f" (its first {done[path]} frames were sorted)" if done.get(path) else ""))
    return rows.summary() | {"files": len(files), "skipped": skipped, "seconds": time.monotonic() - start,
                             "stopped": stopped}

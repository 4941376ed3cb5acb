"""Sorting frames from files with a saved model (diffranb.sort, ``diffranb sort``)."""

import csv
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from diffranb import classic, cli, dataset, evaluate, features, sort


@pytest.fixture(scope="module")
def forest(classic_tiny_set, tmp_path_factory):
    """A spot forest of the 128² tiny set, saved: its detector mask fixes the frame size."""
    root = tmp_path_factory.mktemp("sort")
    store = features.FeatureStore(classic_tiny_set, root / "cache", workers=0, progress=False)
    model = classic.train(classic.ClassicConfig(extractor="spots", n_estimators=20), store, n_jobs=1)
    return classic.save_model(model, root / "spots")


@pytest.fixture(scope="module")
def raw(classic_tiny_set):
    """The tiny set's raw frames, (80, 128, 128) uint16 ADU."""
    with dataset.open_dataset(classic_tiny_set) as ds:
        return ds.images[:]


class Fixed:
    """A stand-in model that calls every frame ``label`` and records how many frames each call got."""

    def __init__(self, classes, label, on_call=None):
        self.classes, self.label, self.calls, self.on_call = tuple(classes), label, [], on_call

    def scores(self, images8):
        self.calls.append(len(images8))
        if self.on_call:
            self.on_call()
        p = np.zeros((len(images8), len(self.classes)))
        p[:, self.classes.index(self.label)] = 1.0
        return p


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sort_to(model, paths, out, **kw):
    summary = sort.write_csv(model, [sort.open_source(p) for p in sort.expand_inputs(paths)], out, progress=False,
                             **kw)
    return summary, read_rows(out)


def test_every_form_of_the_same_frames_sorts_alike(forest, classic_tiny_set, raw, tmp_path):
    """The set itself, its raw frames in another HDF5 file, in .npy (either byte order), in 16-bit and 8-bit
    images and a multi-page TIFF: the same classes and probabilities, the model's own predictions."""
    model = evaluate.load_model(forest)
    expected = [dataset.ALL_CLASSES[k] for k in model.predict(dataset.to_8bit(raw))]
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.create_dataset("entry/data/data", data=raw)
        f.create_dataset("entry/meta/exposure", data=np.ones(3))  # not frames: ignored
        f.create_dataset("entry/meta/pixel_mask", data=np.zeros((128, 128), np.uint32))  # not 8/16-bit: ignored
    np.save(tmp_path / "run.npy", raw)
    np.save(tmp_path / "big-endian.npy", raw.astype(">u2"))
    (tmp_path / "png16").mkdir()
    for i, frame in enumerate(raw):
        Image.fromarray(frame).save(tmp_path / "png16" / f"{i:03d}.png")  # 16-bit greyscale
    pages = [Image.fromarray(frame) for frame in raw]
    pages[0].save(tmp_path / "run.tif", save_all=True, append_images=pages[1:])
    dataset.export_png(classic_tiny_set, tmp_path / "png", progress=False)  # 8-bit, split/class/NNNNNN.png

    rows = {}
    for name, inputs in {"set": [classic_tiny_set], "h5": [tmp_path / "run.h5"], "npy": [tmp_path / "run.npy"],
                         "big-endian": [tmp_path / "big-endian.npy"], "png16": [tmp_path / "png16"],
                         "tif": [tmp_path / "run.tif"]}.items():
        summary, rows[name] = sort_to(model, inputs, tmp_path / f"{name}.csv", batch_size=7)
        assert summary["frames"] == len(rows[name]) == len(raw) and sum(summary["counts"].values()) == len(raw)
        assert [r["label"] for r in rows[name]] == expected, name
        probabilities = [[r[f"p_{c}"] for c in model.classes] for r in rows[name]]
        if name == "set":
            reference = probabilities
        assert probabilities == reference, name
    for name in ("set", "h5", "npy", "tif"):
        assert [int(r["frame"]) for r in rows[name]] == list(range(len(raw)))
    assert [r["file"][-7:] for r in rows["png16"]] == [f"{i:03d}.png" for i in range(len(raw))]
    _, eight_bit = sort_to(model, [tmp_path / "png"], tmp_path / "png8.csv")
    by_index = {int(r["file"].rsplit("/", 1)[1][:-4]): r for r in eight_bit}
    assert [by_index[i]["label"] for i in range(len(raw))] == expected
    for r in rows["set"]:
        p = np.array([float(r[f"p_{c}"]) for c in model.classes])
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and model.classes[p.argmax()] == r["label"]
        assert r["diffraction"] == str(int(r["label"] not in ("blank", "no-crystal")))
    # one split of a set: the set's own frame indices; a single 8-bit frame; a 2-D HDF5 dataset
    with dataset.open_dataset(classic_tiny_set) as ds:
        test = ds.indices("test")
    summary = sort.write_csv(model, [sort.open_source(classic_tiny_set, split="test")], tmp_path / "test.csv",
                             progress=False)
    assert [int(r["frame"]) for r in read_rows(tmp_path / "test.csv")] == list(test)
    assert summary["frames"] == len(test)
    np.save(tmp_path / "one.npy", dataset.to_8bit(raw[5]))
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["frame"] = raw[5]
    for one in ("one.npy", "one.h5"):
        assert [r["label"] for r in sort_to(model, [tmp_path / one], tmp_path / f"{one}.csv")[1]] == [expected[5]]


def test_one_frame_files_are_sorted_in_batches_across_files(tmp_path):
    for i in range(10):
        Image.fromarray(np.full((16, 16), i, np.uint8)).save(tmp_path / f"{i}.png")
    np.save(tmp_path / "three.npy", np.zeros((3, 16, 16), np.uint8))
    model = Fixed(dataset.CLASSES, "weak")
    sources = [sort.open_source(p) for p in sort.expand_inputs([tmp_path])] + [sort.open_source(tmp_path / "three.npy")]
    assert len(sources) == 11  # the directory's images; .npy only when named
    sort.write_csv(model, sources, tmp_path / "out.csv", batch_size=4, progress=False)
    assert model.calls == [4, 4, 4, 1]
    rows = read_rows(tmp_path / "out.csv")
    assert [r["file"][-9:] for r in rows[-3:]] == ["three.npy"] * 3
    assert [r["frame"] for r in rows[-3:]] == ["0", "1", "2"]
    assert sort._tasks(sources, 4)[2] == [(8, 0, 1), (9, 0, 1), (10, 0, 2)]


def test_the_diffraction_column_is_the_binary_accuracy_s(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 16, 16), np.uint8))
    classes = dataset.ALL_CLASSES  # with ice: ice rings scatter, so an ice frame is a diffraction frame
    for label, diffraction in (("ice", "1"), ("no-crystal", "0"), ("blank", "0"), ("weak", "1")):
        out = tmp_path / f"{label}.csv"
        summary = sort.write_csv(Fixed(classes, label), [sort.open_source(tmp_path / "f.npy")], out, progress=False)
        assert {r["diffraction"] for r in read_rows(out)} == {diffraction}
        assert summary["kept"] == 2 * int(diffraction)
        assert label not in evaluate.NO_DIFFRACTION or diffraction == "0"


def test_frames_the_model_cannot_take_are_refused_before_any_is_sorted(forest, tmp_path):
    model = evaluate.load_model(forest)
    np.save(tmp_path / "big.npy", np.zeros((2, 256, 256), np.uint8))
    with pytest.raises(ValueError, match="frames of 256×256 pixels; the model was trained on 128×128"):
        sort.write_csv(model, [sort.open_source(tmp_path / "big.npy")], tmp_path / "out.csv", progress=False)
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob(".out.csv*"))
    refused = {"float.npy": (np.zeros((2, 16, 16), np.float32), "float32; diffranb reads 8-bit"),
               "int32.npy": (np.zeros((2, 16, 16), np.int32), "int32; diffranb reads 8-bit"),
               "cube.npy": (np.zeros((2, 2, 16, 16), np.uint8), r"shape \(2, 2, 16, 16\)")}
    for name, (array, message) in refused.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=message):
            sort.open_source(tmp_path / name)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable .npy"):
        sort.open_source(tmp_path / "empty.npy")
    Image.new("RGB", (16, 16)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="a RGB image; .*convert it to greyscale"):
        sort.open_source(tmp_path / "colour.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="diffranb sorts HDF5"):
        sort.open_source(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        sort.open_source(tmp_path / "broken.png")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 128, 128), np.uint16)
        f["b"] = np.zeros((2, 128, 128), np.uint16)
        f["line"] = np.zeros(128, np.uint16)
        f["stack4"] = np.zeros((2, 1, 128, 128), np.uint16)
    with pytest.raises(ValueError, match="2 arrays of 8-bit or 16-bit frames .*--dataset"):
        sort.open_source(tmp_path / "two.h5")
    assert sort.open_source(tmp_path / "two.h5", dataset="b").n_frames == 2
    for name, message in (("c", "no dataset 'c'"), ("line", r"shape \(128,\)"), ("stack4", r"shape \(2, 1, 128")):
        with pytest.raises(ValueError, match=message):
            sort.open_source(tmp_path / "two.h5", dataset=name)
    with pytest.raises(ValueError, match="--split is for sets built by diffranb generate"):
        sort.open_source(tmp_path / "two.h5", split="test")
    with pytest.raises(FileNotFoundError):
        sort.expand_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images or HDF5 files under this directory"):
        sort.expand_inputs([tmp_path / "empty"])


def test_a_network_checks_the_size_its_input_bins_from():
    pytest.importorskip("torch")
    from diffranb import deepfreak as dfk

    net = dfk.build_network(8, 5, (32, 32))
    model = dfk.DeepFreakModel(net, dataset.CLASSES, 4, np.zeros((32, 32), np.float32))
    sort.check_frame_size(model, (128, 128))
    sort.check_frame_size(model, (131, 130))  # bins to the same 32 × 32
    with pytest.raises(ValueError, match="frames of 132×128 pixels; the model was trained on 128×128"):
        sort.check_frame_size(model, (132, 128))


def test_nothing_is_overwritten_not_even_a_file_that_appears_while_sorting(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 16, 16), np.uint8))
    source = [sort.open_source(tmp_path / "f.npy")]
    out = tmp_path / "out.csv"
    model = Fixed(dataset.CLASSES, "good", on_call=lambda: out.exists() or out.write_text("someone else's\n"))
    with pytest.raises(ValueError, match="appeared while sorting: left as it is; the rows are in"):
        sort.write_csv(model, source, out, progress=False)
    assert out.read_text() == "someone else's\n"
    kept = list(tmp_path.glob(".out.csv.*.partial"))
    assert len(kept) == 1 and len(read_rows(kept[0])) == 3  # the rows are not lost
    with pytest.raises(ValueError, match="exists: refusing to overwrite it; choose another name"):
        sort.write_csv(Fixed(dataset.CLASSES, "good"), source, out, progress=False)
    with pytest.raises(ValueError, match="cannot write there"):
        sort.write_csv(Fixed(dataset.CLASSES, "good"), source, tmp_path / "no-such-dir" / "x.csv", progress=False)


def test_sort_command_prints_the_shares_and_never_overwrites(forest, classic_tiny_set, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(out), "--split", "val",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with dataset.open_dataset(classic_tiny_set) as ds:
        n_val = len(ds.indices("val"))
    assert f"sorted {n_val} frames of 1 file" in printed and "diffraction" in printed
    assert len(read_rows(out)) == n_val
    before = out.read_bytes()
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(out),
                     "--no-progress"]) == 2
    assert "exists: refusing to overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(tmp_path / "b.csv"),
                     "--batch", "0", "--no-progress"]) == 2
    assert "batch_size = 0" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()


def test_two_processes_write_the_same_rows_in_the_same_order(forest, classic_tiny_set, raw, tmp_path, capsys):
    model = evaluate.load_model(forest)
    np.save(tmp_path / "odd.npy", dataset.to_8bit(raw[:11]))
    sources = [sort.open_source(classic_tiny_set, split="test"), sort.open_source(tmp_path / "odd.npy")]
    sort.write_csv(model, sources, tmp_path / "one.csv", batch_size=4, progress=False)
    n = sources[0].n_frames + 11
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), str(tmp_path / "odd.npy"), "--split",
                     "test", "--out", str(tmp_path / "two.csv"), "--batch", "4", "--workers", "2",
                     "--no-progress"]) == 0
    assert f"sorted {n} frames of 2 files" in capsys.readouterr().out
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    with pytest.raises(ValueError, match="give model_dir"):
        next(sort.sort_frames(model, sources, workers=2))


@pytest.mark.parametrize("workers", [1, 2])
def test_follow_sorts_files_as_they_appear_and_skips_what_it_cannot_read(forest, raw, tmp_path, workers):
    import threading

    model = evaluate.load_model(forest)
    expected = [dataset.ALL_CLASSES[k] for k in model.predict(dataset.to_8bit(raw[:9]))]
    run = tmp_path / "run"
    run.mkdir()
    for i in range(3):  # already there when the run starts
        Image.fromarray(raw[i]).save(run / f"{i:03d}.png")

    def detector():
        for i in range(3, 8):
            time.sleep(0.15)
            Image.fromarray(raw[i]).save(run / f".{i:03d}.png.tmp", format="PNG")  # written, then renamed
            os.replace(run / f".{i:03d}.png.tmp", run / f"{i:03d}.png")
        (run / "broken.png").write_bytes(b"not a png")
        np.save(run / "small.npy", np.zeros((2, 64, 64), np.uint8))  # not the model's size
        np.save(run / "last.npy", dataset.to_8bit(raw[8]))

    warned = []
    writer = threading.Thread(target=detector)
    writer.start()
    out = tmp_path / "live.csv"
    result = sort.follow(model, run, out, batch_size=4, poll_s=0.05, idle_timeout_s=2.0, progress=False,
                         warn=warned.append, workers=workers, model_dir=forest)
    writer.join()
    rows = read_rows(out)
    assert result["stopped"] == "idle" and result["frames"] == len(rows) == 9 and result["files"] == 9
    names = [Path(r["file"]).name for r in rows]
    assert names[:8] == [f"{i:03d}.png" for i in range(8)] and names[8] == "last.npy"  # in the order they came
    assert [r["label"] for r in rows] == expected
    assert sorted(Path(p).name for p in result["skipped"]) == ["broken.png", "small.npy"] and len(warned) == 2
    assert "the model was trained on 128×128" in " ".join(warned)
    with pytest.raises(ValueError, match="exists: refusing to overwrite"):
        sort.follow(model, run, out, idle_timeout_s=0.1, progress=False)
    with pytest.raises(ValueError, match="not a directory to follow"):
        sort.follow(model, run / "000.png", tmp_path / "x.csv", progress=False)


def test_follow_command_line(forest, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    out = tmp_path / "live.csv"
    args = ["sort", "--model", str(forest), str(tmp_path / "run"), "--out", str(out), "--follow", "--no-progress"]
    assert cli.main(args + ["--idle-timeout", "0.3", "--poll", "0.05"]) == 0
    assert "followed" in capsys.readouterr().out and read_rows(out) == []  # the header only: nothing came
    out.unlink()
    with h5py.File(tmp_path / "run" / "frames.h5", "w") as f:  # two arrays of frames: --dataset names one
        f["entry/data/data"] = np.zeros((3, 128, 128), np.uint16)
        f["entry/data/dark"] = np.zeros((1, 128, 128), np.uint16)
    assert cli.main(args + ["--idle-timeout", "0.5", "--poll", "0.05", "--dataset", "entry/data/data"]) == 0
    assert [int(r["frame"]) for r in read_rows(out)] == [0, 1, 2]
    out.unlink()
    assert cli.main(args + ["--split", "test", "--idle-timeout", "0.3"]) == 2
    assert "no --split" in capsys.readouterr().err and not out.exists()
    assert cli.main(args[:3] + [str(tmp_path / "run"), str(tmp_path / "run")] + args[4:]) == 2
    assert "give one directory" in capsys.readouterr().err
    for option in ("--idle-timeout", "--poll"):
        assert cli.main(args[:-2] + [option, "1"]) == 2  # without --follow
        assert "--idle-timeout and --poll are for --follow" in capsys.readouterr().err
    assert cli.main(args + ["--poll", "inf", "--idle-timeout", "1"]) == 2
    assert "poll_s = inf: must be a finite number" in capsys.readouterr().err


def test_follow_waits_for_a_file_to_be_whole_and_leaves_hidden_ones(tmp_path):
    import threading

    run = tmp_path / "run"
    (run / ".staging").mkdir(parents=True)
    (run / "sub").mkdir()
    np.save(run / ".staging" / "copy.npy", np.zeros((1, 16, 16), np.uint8))  # a writer's staging directory
    np.save(run / ".hidden.npy", np.zeros((1, 16, 16), np.uint8))
    header = tmp_path / "header.npy"
    np.save(header, np.zeros((3, 16, 16), np.uint8))
    data = header.read_bytes()

    def slow_writer():  # one file written in two pieces, the second well within one poll of the first
        with open(run / "sub" / "slow.npy", "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.05)
            f.write(data[len(data) // 2:])

    writer = threading.Thread(target=slow_writer)
    writer.start()
    model = Fixed(dataset.CLASSES, "strong")
    warned = []
    result = sort.follow(model, run, tmp_path / "out.csv", poll_s=0.4, idle_timeout_s=0.8, progress=False,
                         warn=warned.append)
    writer.join()
    rows = read_rows(tmp_path / "out.csv")
    assert [Path(r["file"]).name for r in rows] == ["slow.npy"] * 3, (rows, warned)
    assert result["skipped"] == {} and warned == []


def test_follow_sorts_what_comes_during_a_long_sort_and_survives_a_file_that_vanishes(tmp_path, monkeypatch):
    import threading

    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "a.npy", np.zeros((1, 16, 16), np.uint8))
    np.save(run / "gone.npy", np.zeros((1, 16, 16), np.uint8))
    real = sort.open_source

    def open_or_vanish(path, **kw):
        if Path(path).name == "gone.npy":
            raise FileNotFoundError(f"{str(path)!r}: no such file")
        return real(path, **kw)

    monkeypatch.setattr(sort, "open_source", open_or_vanish)
    later = threading.Timer(0.4, lambda: np.save(run / "b.npy", np.zeros((1, 16, 16), np.uint8)))
    model = Fixed(dataset.CLASSES, "weak", on_call=lambda: time.sleep(1.2))  # a sort longer than the timeout
    later.start()
    warned = []
    result = sort.follow(model, run, tmp_path / "out.csv", poll_s=0.1, idle_timeout_s=0.6, progress=False,
                         warn=warned.append)
    later.join()
    rows = read_rows(tmp_path / "out.csv")
    assert sorted(Path(r["file"]).name for r in rows) == ["a.npy", "b.npy"]
    assert [Path(p).name for p in result["skipped"]] == ["gone.npy"] and len(warned) == 1


#: A detector writing HDF5 in another process (a writer in this one would share the reader's file handle):
#: bursts of frames 16 × 16, their grey level their number, with a pause after each burst; the time each burst
#: became readable and the time the file was closed go to ``<file>.log``.
HDF5_WRITER = """
import sys, time, h5py, numpy as np
path, mode, bursts, pause = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3].split(",")], float(sys.argv[4])
log = open(path + ".log", "w")
f = h5py.File(path, "w", libver="latest" if mode == "swmr" else None)
data = f.create_dataset("entry/data/data", (0, 16, 16), np.uint8, maxshape=(None, 16, 16), chunks=(1, 16, 16))
f.create_dataset("entry/meta/exposure", data=np.ones(3))
if mode == "swmr":
    f.swmr_mode = True
n = 0
for burst in bursts:
    data.resize((n + burst, 16, 16))
    data[n:n + burst] = np.arange(n, n + burst, dtype=np.uint8)[:, None, None]
    n += burst
    data.flush() if mode == "swmr" else f.flush()
    print("burst", time.time(), file=log, flush=True)
    time.sleep(pause)
f.close()
print("closed", time.time(), file=log, flush=True)
"""


class Recorder(Fixed):
    """:class:`Fixed`, also recording when it was called and the grey level of every frame it got."""

    def __init__(self):
        super().__init__(dataset.CLASSES, "good")
        self.times, self.levels = [], []

    def scores(self, images8):
        self.times.append(time.time())
        self.levels.extend(int(im[0, 0]) for im in images8)
        return super().scores(images8)


def wait_for_rows(out, n, timeout_s=60.0):
    """Wait until the CSV ``out`` holds ``n`` rows below its header."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and len(read_rows(out)) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{out} did not reach {n} rows")


def follow_writer(tmp_path, mode, bursts, pause, poll_s=0.1, idle_s=1.5, then=None, directory=None):
    """Follow a directory while :data:`HDF5_WRITER` writes ``run/frames.h5``; ``then(path, out)`` is called once
    the writer has closed it, within the run. ``directory``: what to follow, named relative to ``run`` (default:
    ``run`` by its full path). Returns (model, rows, result, warnings, the writer's log)."""
    import subprocess
    import sys
    import threading

    run = tmp_path / "run"
    run.mkdir()
    path, out = run / "frames.h5", tmp_path / "out.csv"
    writer = subprocess.Popen([sys.executable, "-c", HDF5_WRITER, str(path), mode, ",".join(map(str, bursts)),
                               str(pause)])
    deadline = time.monotonic() + 60
    while not (run / "frames.h5.log").exists() and time.monotonic() < deadline:  # the idle timer starts now
        time.sleep(0.01)
    failed = []

    def after_writer():
        try:
            writer.wait()
            if then is not None:
                then(path, out)
        except BaseException as exc:  # re-raised in the test
            failed.append(exc)

    thread = threading.Thread(target=after_writer)
    thread.start()
    model, warned = Recorder(), []
    here = os.getcwd()
    try:
        os.chdir(run)
        result = sort.follow(model, run if directory is None else directory, out, batch_size=4, poll_s=poll_s,
                             idle_timeout_s=idle_s, progress=False, warn=warned.append)
    finally:
        os.chdir(here)
    thread.join()
    if failed:
        raise failed[0]
    assert writer.returncode == 0
    log = [line.split() for line in (run / "frames.h5.log").read_text().splitlines()]
    return model, read_rows(out), result, warned, log


def test_follow_reads_an_hdf5_file_written_in_swmr_mode_as_it_grows(tmp_path):
    # a burst every 0.05 s, listed every 0.2 s: the file never holds still until it is closed
    model, rows, result, warned, log = follow_writer(tmp_path, "swmr", [1, 2, 1, 3] * 6, pause=0.05, poll_s=0.2)
    closed = float(log[-1][1])
    assert warned == [] and result["skipped"] == {} and result["files"] == 1
    assert [int(r["frame"]) for r in rows] == list(range(42)) and model.levels == list(range(42))  # each once
    assert min(model.times) < closed  # read while the writer held it open
    assert all(Path(r["file"]).name == "frames.h5" for r in rows)


def test_follow_waits_for_a_locked_hdf5_file_and_takes_frames_appended_later(tmp_path):
    import h5py

    def append_three(path, out):  # the file opened again once its six frames are sorted, three frames appended
        wait_for_rows(out, 6)
        with h5py.File(path, "a") as f:
            data = f["entry/data/data"]
            data.resize((9, 16, 16))
            data[6:] = np.arange(6, 9, dtype=np.uint8)[:, None, None]

    model, rows, result, warned, log = follow_writer(tmp_path, "plain", [2, 4], pause=0.6, then=append_three)
    closed = float(log[-1][1])
    assert warned == [] and result["skipped"] == {}  # held open past a poll: not an unreadable file
    assert [int(r["frame"]) for r in rows] == list(range(9)) and model.levels == list(range(9))
    assert min(model.times) > closed  # a locked file is read once its writer has closed it
    assert model.calls == [4, 2, 3]  # the six frames once closed, the three appended ones later


def test_follow_stops_when_idle_though_a_writer_holds_a_file_open(tmp_path):
    # two frames written, then the file held open (and locked) for 8 s: nothing changes, and the run ends idle
    model, rows, result, warned, _ = follow_writer(tmp_path, "plain", [2], pause=8.0, idle_s=1.0)
    assert result["stopped"] == "idle" and result["seconds"] < 6.0 and rows == [] and model.calls == []
    assert len(warned) == 1 and "held open by its writer, when the run stopped" in warned[0]


def test_follow_refuses_an_hdf5_file_rewritten_with_fewer_frames(tmp_path):
    import h5py

    def rewrite(path, out):
        wait_for_rows(out, 5)
        with h5py.File(path, "w") as f:
            f["entry/data/data"] = np.zeros((2, 16, 16), np.uint8)

    # followed as ".": files are named alike however the directory was given
    model, rows, result, warned, _ = follow_writer(tmp_path, "plain", [5], pause=0.0, then=rewrite, directory=".")
    assert [int(r["frame"]) for r in rows] == list(range(5)) and rows[0]["file"] == "frames.h5"
    assert len(warned) == 1 and "holds 2 frames, fewer than the 5 sorted" in warned[0]
    assert list(result["skipped"]) == ["frames.h5"]


def test_bench_follow_times_a_follower_against_a_detector_writing_at_a_rate(forest, classic_tiny_set, capsys):
    from diffranb import bench

    figures = bench.run("follow", model=str(forest), data=str(classic_tiny_set),
                        follow_options={"rate_hz": 40.0, "seconds": 1.0})
    assert figures["frames"] == 40 and figures["written_hz"] == pytest.approx(40.0, rel=0.2)
    assert figures["lag_s"] >= 0 and figures["keeps_up"] in (0.0, 1.0) and "lag_s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not --repeats or --batch"):
        bench.run("follow", model=str(forest), repeats=3)
    with pytest.raises(ValueError, match="--model .* is required"):
        bench.run("follow")
    with pytest.raises(ValueError, match="--seconds = 0.0: must be"):
        bench.run("follow", model=str(forest), data=str(classic_tiny_set), follow_options={"seconds": 0.0})
    assert cli.main(["bench", "read", "--rate", "10"]) == 2
    assert "--rate and --seconds are for bench follow only" in capsys.readouterr().err


def test_an_hdf5_file_changed_after_it_was_opened_is_reported_not_raised(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((3, 16, 16), np.uint8)
    source = sort.open_source(path)
    assert sort._read(source, 0, 2).shape == (2, 16, 16)
    with h5py.File(path, "a") as f:  # rewritten under another name between the listing and the read
        f.move("frames", "data")
    with pytest.raises(ValueError, match="could not read frames 0 … 1 .*KeyError"):
        sort._read(source, 0, 2)

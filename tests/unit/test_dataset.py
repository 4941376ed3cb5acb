"""The DiffraNet-scale data set: class physics, seeding, storage, resumable builds, export."""

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np
import pytest
from PIL import Image

from diffranb import cli, dataset, evaluate
from diffranb.sim.bragg import bragg_fast, predict_spots
from diffranb.sim.detector import beamstop_transmission
from diffranb.sim.scene import example_scene, render

TINY = dict(pixels=64, progress=False)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 frames of 64 × 64 pixels, built without a cluster: the reference the Dask builds must match."""
    return dataset.build(24, 3, tmp_path_factory.mktemp("tiny") / "tiny.h5", workers=0, **TINY)


# --- The defining quantity ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lysozyme():
    return example_scene(3)


def test_reflections_are_those_the_simulator_draws(lysozyme):
    table = dataset.reflection_table(lysozyme)
    spots = predict_spots(lysozyme.crystal, lysozyme.beam, lysozyme.detector)
    ours = {(h, k, l): (s, f) for h, k, l, s, f in zip(table["h"], table["k"], table["l"], table["slow"],
                                                         table["fast"])}
    theirs = {(h, k, l): (s, f) for h, k, l, s, f in zip(spots["h"], spots["k"], spots["l"], spots["slow"],
                                                           spots["fast"])}
    assert ours.keys() == theirs.keys() and len(ours) > 500
    assert max(abs(ours[key][0] - theirs[key][0]) + abs(ours[key][1] - theirs[key][1]) for key in ours) < 1e-9


def test_integrated_signal_is_what_the_rendered_spots_hold(lysozyme):
    # S_G is the Gaussian spot integrated over the Ewald sphere; summing the rendered pixels around isolated,
    # unshadowed spots gives the same, up to the pixel sampling of spots narrower than a pixel (± 30 %).
    crystal, det = lysozyme.crystal, lysozyme.detector
    table = dataset.reflection_table(lysozyme)
    image = bragg_fast(crystal, lysozyme.beam, det).astype(float)
    shadow = beamstop_transmission(lysozyme.response, det)
    expected = table["photons_per_block"] * crystal.n_blocks
    ratios = []
    for g in np.argsort(-expected)[:300]:
        s, f = table["slow"][g], table["fast"][g]
        neighbours = np.hypot(table["slow"] - s, table["fast"] - f)
        neighbours[g] = np.inf
        i, j = round(s), round(f)
        if neighbours.min() > 8 and 5 <= i < det.n_slow - 5 and 5 <= j < det.n_fast - 5 and shadow[i, j] == 1:
            ratios.append(image[i - 3:i + 4, j - 3:j + 4].sum() / expected[g])
    assert len(ratios) > 50
    assert np.median(ratios) == pytest.approx(1.0, abs=0.05)


def test_threshold_is_where_i_over_sigma_reaches_three(lysozyme):
    table = dataset.reflection_table(lysozyme, min_i_over_sigma=3.0)
    read = lysozyme.response.readout_noise_adu
    finite = np.isfinite(table["threshold_blocks"])
    signal_ = table["threshold_blocks"][finite] * table["photons_per_block"][finite]
    noise = np.sqrt(signal_ + table["background"][finite] + dataset.SPOT_BOX_PX**2 * read**2)
    # Reflections next to the detector's edge have smaller boxes; the bulk has full 3 × 3 boxes.
    assert np.median(np.abs(signal_ / noise - 3.0)) < 1e-9
    n, d_min = dataset.count_significant(table, lysozyme.crystal.n_blocks)
    assert n == int(np.sum(table["threshold_blocks"] <= lysozyme.crystal.n_blocks))
    assert dataset.count_significant(table, 2 * lysozyme.crystal.n_blocks)[0] >= n
    assert d_min == pytest.approx(table["d_A"][table["threshold_blocks"] <= lysozyme.crystal.n_blocks].min())


def test_labels_follow_the_cuts():
    cuts = dataset.Cuts(weak=5, good=40, strong=150, ice_contrast=1.0)
    x_rays = [0, 1, 1, 1, 1, 1, 1, 1]
    n_sig = [500, 0, 4, 5, 39, 40, 150, 3]
    ice = [0, 0, 0, 0, 0, 0, 0, 2.0]
    assert dataset.label_codes(x_rays, n_sig, ice, cuts=cuts).tolist() == [0, 1, 1, 2, 2, 3, 4, 1]
    assert dataset.label_codes(x_rays, n_sig, ice, cuts=cuts, ice=True).tolist() == [0, 1, 1, 2, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="weak < good < strong"):
        dataset.Cuts(weak=50, good=40)


def test_eight_bit_map_is_monotone_and_fixed():
    adu = np.arange(65536, dtype=np.uint16)
    grey = dataset.to_8bit(adu)
    assert grey.dtype == np.uint8 and np.all(np.diff(grey.astype(int)) >= 0)
    assert grey[dataset.ADU_ZERO] == 0 and grey[dataset.ADU_FULL] == 255
    with pytest.raises(ValueError, match="uint16"):
        dataset.to_8bit(adu.astype(np.int32))


# --- Seeds, classes and splits --------------------------------------------------------------------------


def test_splits_are_exact_for_every_size():
    # a greedy rounding alone fell short at some sizes (150 frames could not be built) and rounded whole
    # cells up at others (40): every size must come out exact, with and without the ice class
    for n in range(1, 501):
        for classes in (dataset.CLASSES, dataset.CLASSES + (dataset.ICE,)):
            targets, split = dataset.assign(dataset.BuildConfig(n, seed=0, classes=classes))
            assert np.bincount(split, minlength=3).tolist() == \
                dataset._largest_remainder(n, dataset.SPLIT_SHARES).tolist()
            counts = np.bincount(targets, minlength=6)
            for code in range(6):  # within each class, every split within one frame of its share
                assert np.abs(np.bincount(split[targets == code], minlength=3)
                              - counts[code] * np.array(dataset.SPLIT_SHARES)).max() < 1, (n, code)


def test_splits_and_shares_are_exact_at_diffranet_scale():
    config = dataset.BuildConfig(25000, seed=0)
    targets, split = dataset.assign(config)
    assert np.bincount(split).tolist() == [10000, 2400, 12600]
    counts = np.bincount(targets, minlength=5)
    assert counts.tolist() == [round(25000 * dataset.DIFFRANET_SHARES[c]) for c in dataset.CLASSES]
    for code in range(5):  # every split holds every class in the same proportion, to one frame
        assert np.abs(np.bincount(split[targets == code], minlength=3) - counts[code] * np.array(
            dataset.SPLIT_SHARES)).max() < 1
    again = dataset.assign(config)
    assert np.array_equal(again[0], targets) and np.array_equal(again[1], split)
    other = dataset.assign(replace(config, seed=1))
    assert not np.array_equal(other[0], targets)


def test_a_frame_depends_on_its_seed_and_index_only():
    a = dataset.draw_frame(7, 11, "good", pixels=64)[1]
    b = dataset.draw_frame(7, 11, "good", pixels=64)[1]
    c = dataset.draw_frame(7, 12, "good", pixels=64)[1]
    assert a == b or all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
    assert a["noise_seed"] != c["noise_seed"]
    # Frames of one run share the beamline setup, and only that.
    assert a["distance_mm"] == c["distance_mm"] and a["water_thickness_um"] != c["water_thickness_um"]


@pytest.mark.parametrize("target", ["blank", "no-crystal", "weak", "good", "strong", "ice"])
def test_a_drawn_frame_is_of_its_class_and_renders_from_its_row(target):
    cuts = dataset.Cuts()
    scene, p = dataset.draw_frame(5, 40, target, pixels=96, cuts=cuts)
    code = dataset.label_codes([p["x_rays"]], [p["n_significant"]], [p["ice_contrast"]], cuts=cuts, ice=True)[0]
    assert dataset.ALL_CLASSES[code] == target
    assert (scene.crystal is not None) == bool(p["has_crystal"])
    frame = render(scene, seed=p["noise_seed"])
    assert np.array_equal(frame, render(dataset.scene_from_params(p, 96), seed=p["noise_seed"]))


def test_shares_follow_the_targets_on_a_few_hundred_frames(tmp_path):
    path = dataset.build(300, 11, tmp_path / "shares.h5", workers=0, pixels=32, progress=False)
    with dataset.open_dataset(path) as ds:
        info = dataset.summary(ds)
        assert info["label_matches_target"] >= 0.97
        for c, share in info["target_shares"].items():
            assert info["shares"][c] == pytest.approx(share, abs=0.03)
        # Every label is what its defining quantity says, and the quantity is stored to re-cut.
        n_sig = ds.column("n_significant")
        assert np.array_equal(ds.labels, dataset.relabel(ds, ds.config.cuts))
        crystal = ds.labels >= 2
        assert np.all(n_sig[crystal] >= ds.config.cuts.weak) and np.all(n_sig[ds.labels == 1] < ds.config.cuts.weak)
        stricter = dataset.relabel(ds, dataset.Cuts(weak=10, good=80, strong=300))
        assert np.all(stricter <= ds.labels) and np.any(stricter < ds.labels)
        # Adjacent classes touch: the quantity runs continuously across each cut.
        assert n_sig[ds.labels == 3].min() < 2 * ds.config.cuts.good
        assert n_sig[ds.labels == 2].max() > ds.config.cuts.good / 2


# --- Builds: Dask, byte identity, resume ----------------------------------------------------------------


def test_one_and_two_workers_give_the_same_file(tiny, tmp_path):
    one = dataset.build(24, 3, tmp_path / "one.h5", workers=1, **TINY)
    two = dataset.build(24, 3, tmp_path / "two.h5", workers=2, **TINY)
    assert sha256(one) == sha256(two) == sha256(tiny)
    assert not (tmp_path / "one.h5.parts").exists()
    with dataset.open_dataset(two) as ds:
        assert ds.verify()


def test_an_existing_scheduler_is_used_by_its_address(tiny, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": ":0"}) as cluster:
        remote = dataset.build(24, 3, tmp_path / "remote.h5", scheduler=cluster.scheduler_address, **TINY)
    assert sha256(remote) == sha256(tiny)


def test_derived_quantities_are_rounded_and_an_unrounded_build_is_not_taken_for_one(tiny, tmp_path):
    with h5py.File(tiny, "r") as f:
        columns = {name: f["params"][name][:] for name in dataset.DERIVED_COLUMNS}
    assert np.isfinite(columns["n_blocks"]).any() and (columns["bragg_photons"] > 0).any()
    for name, values in columns.items():  # every derived column holds what _derived leaves unchanged
        finite = values[np.isfinite(values)]
        assert all(x == float(f"{x:.{dataset.DERIVED_DIGITS}g}") for x in finite), name
    # a file built before the rounding (same parameters and version) is refused, not returned as this build
    old = tmp_path / "old.h5"
    old.write_bytes(tiny.read_bytes())
    with h5py.File(old, "r+") as f:
        blocks = f["params/n_blocks"]
        first = int(np.flatnonzero(np.isfinite(blocks[:]))[0])
        blocks[first] = np.nextafter(blocks[first], np.inf)
    with pytest.raises(ValueError, match="earlier diffranb"):
        dataset.build(24, 3, old, workers=0, **TINY)


def _numpy_avx512():
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("X86_V4"))


@pytest.mark.skipif(not _numpy_avx512(), reason="numpy runs its AVX-512 loops only on a CPU that has AVX-512")
def test_numpy_avx512_and_avx2_loops_give_the_same_file(tiny, tmp_path):
    # numpy reads NPY_DISABLE_CPU_FEATURES when it is imported: a new process builds the set with the AVX2
    # loops, as on a CPU without AVX-512, and this one (the fixture) with the AVX-512 loops.
    out = tmp_path / "avx2.h5"
    code = (f"from diffranb import dataset\n"
            f"dataset.build(24, 3, {str(out)!r}, workers=0, pixels=64, progress=False)\n")
    env = os.environ | {"NPY_DISABLE_CPU_FEATURES": "X86_V4"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    with dataset.open_dataset(out) as avx2, dataset.open_dataset(tiny) as avx512:
        assert np.array_equal(avx2.images[:], avx512.images[:])  # the frames never differed
        assert avx2.content_sha256 == avx512.content_sha256
    assert sha256(out) == sha256(tiny)


def test_a_killed_build_resumes_to_the_same_file(tmp_path):
    out = tmp_path / "killed.h5"
    code = (f"from diffranb import dataset\n"
            f"dataset.build(48, 5, {str(out)!r}, workers=1, pixels=256, shard_size=2, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.monotonic() + 60
    try:
        while len(list(parts.glob("shard_*.npz"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, mid-way
        proc.wait()
    done = len(list(parts.glob("shard_*.npz")))
    assert not out.exists() and 3 <= done < 24, "the build was not interrupted mid-way"
    resumed = dataset.build(48, 5, out, workers=0, pixels=256, shard_size=2, progress=False)
    reference = dataset.build(48, 5, tmp_path / "reference.h5", workers=0, pixels=256, progress=False)
    assert sha256(resumed) == sha256(reference)
    assert not parts.exists()


def test_an_existing_build_is_returned_untouched(tiny):
    before = (sha256(tiny), tiny.stat().st_mtime_ns)
    assert dataset.build(24, 3, tiny, workers=0, **TINY) == tiny
    assert (sha256(tiny), tiny.stat().st_mtime_ns) == before


# --- Bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_images=0), "n_images = 0"),
    (dict(n_images=-3), "n_images = -3"),
    (dict(n_images=2.5), "n_images = 2.5"),
    (dict(seed=-1), "seed = -1"),
    (dict(classes=("blank", "no-crystal", "weak", "good", "strong", "snow")), "unknown class 'snow'"),
    (dict(classes=("blank", "weak")), "five DiffraNet classes"),
    (dict(shares={"blank": 1.0, "nonsense": 1.0}), "'nonsense' is not one of the classes"),
    (dict(shares=(1.0, -1.0, 1.0, 1.0, 1.0)), "share ≥ 0"),
    (dict(pixels=8), "pixels = 8"),
    (dict(workers=-1), "workers = -1"),
])
def test_bad_parameters_are_refused(tmp_path, kwargs, message):
    args = dict(n_images=4, seed=0, out=tmp_path / "x.h5", workers=0, pixels=32, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        dataset.build(**args)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_places_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        dataset.build(4, 0, tmp_path / "missing" / "x.h5", workers=0, pixels=32, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="does not exist"):
        dataset.build(4, 0, tmp_path / "file" / "x.h5", workers=0, pixels=32, progress=False)


def test_existing_files_of_other_builds_are_never_overwritten(tiny, tmp_path):
    before = sha256(tiny)
    with pytest.raises(ValueError, match="other parameters.*seed"):
        dataset.build(24, 4, tiny, workers=0, **TINY)
    with pytest.raises(ValueError, match="other parameters.*n_images"):
        dataset.build(25, 3, tiny, workers=0, **TINY)
    assert sha256(tiny) == before
    foreign = tmp_path / "notes.h5"
    foreign.write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        dataset.build(4, 0, foreign, workers=0, pixels=32, progress=False)
    assert foreign.read_text() == "not hdf5"


def test_a_partial_build_with_other_parameters_is_refused(tmp_path):
    out = tmp_path / "partial.h5"
    parts = tmp_path / "partial.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text('{"format": "diffranb-dataset/1", "config": {"seed": 9}}')
    with pytest.raises(ValueError, match="partial build with other parameters"):
        dataset.build(4, 0, out, workers=0, pixels=32, progress=False)
    assert not out.exists() and (parts / "manifest.json").exists()


# --- Reading and exporting -------------------------------------------------------------------------------


def test_frames_are_read_in_runs_as_h5py_reads_them_one_by_one(tiny, capsys):
    from diffranb import bench

    with dataset.open_dataset(tiny) as ds:
        wanted = np.array([0, 1, 2, 2, 5, 9, 10, 23])  # runs, a repeat, the last frame
        one_by_one = np.stack([ds.images[int(i)] for i in wanted])
        assert np.array_equal(dataset.read_frames(ds.images, wanted), one_by_one)
        assert dataset.read_frames(ds.images, []).shape == (0, 64, 64)
        for bad in ([3, 2], [-1, 0], [23, 24]):
            with pytest.raises(ValueError, match="must be increasing indices below 24"):
                dataset.read_frames(ds.images, bad)
        for bad in ([0.9, 2.7], [False, True, True], [[0, 1]]):  # h5py refuses floats; a mask is not indices
            with pytest.raises(ValueError, match="a 1-D array of integer indices"):
                dataset.read_frames(ds.images, bad)
        # a shuffled batch comes back in the order asked for
        images, labels, idx = next(ds.batches([9, 2, 3, 9], batch_size=4, eight_bit=False))
        assert np.array_equal(images, np.stack([ds.images[i] for i in (9, 2, 3, 9)])) and list(idx) == [9, 2, 3, 9]
    figures = bench.run("read", repeats=3, data=str(tiny), batch=5)  # checks itself against h5py's list reads
    assert figures["batch"] == 5 and figures["read_frames_per_s"] > 0 and figures["h5py_list_frames_per_s"] > 0
    assert "speedup" in capsys.readouterr().out


def test_the_file_is_read_lazily(tiny):
    with dataset.open_dataset(tiny) as ds:
        assert isinstance(ds.images, h5py.Dataset)  # nothing read yet
        assert ds.images.chunks == (1, 64, 64) and ds.images.compression == "gzip" and ds.images.shuffle
        assert ds.images.dtype == np.uint16 and len(ds) == 24
        assert ds.image(5).shape == (64, 64)
        assert np.array_equal(ds.image8(5), dataset.to_8bit(ds.image(5)))
        seen = np.concatenate([idx for _, _, idx in ds.batches(ds.indices(split="test"), batch_size=5)])
        assert np.array_equal(seen, ds.indices(split="test"))
        images, labels, idx = next(ds.batches([7, 2], batch_size=2))
        assert images.dtype == np.uint8 and np.array_equal(images[0], ds.image8(7)) and labels[1] == ds.labels[2]
        row = ds.row(9)
        assert np.array_equal(render(dataset.scene_from_params(row, 64), seed=int(row["noise_seed"])), ds.image(9))
        f = ds._file
        assert f.attrs["diffranb_version"] and f.attrs["seed"] == 3
        assert len(f.attrs["content_sha256"]) == 64


def test_png_export_has_the_diffranet_layout(tiny, tmp_path):
    out = tmp_path / "png"
    assert dataset.export_png(tiny, out, progress=False) == 24
    files = sorted(out.glob("*/*/*.png"))
    assert len(files) == 24
    with dataset.open_dataset(tiny) as ds:
        for path in files:
            index = int(path.stem)
            assert path.parent.parent.name == dataset.SPLITS[ds.split[index]]
            assert path.parent.name == dataset.ALL_CLASSES[ds.labels[index]]
        with Image.open(files[0]) as png:
            assert png.mode == "L" and np.array_equal(np.asarray(png), ds.image8(int(files[0].stem)))
    with pytest.raises(ValueError, match="not empty"):
        dataset.export_png(tiny, out, progress=False)


def test_the_ice_class_is_a_sixth_label(tmp_path):
    path = dataset.build(40, 2, tmp_path / "ice.h5", classes=dataset.CLASSES + ("ice",), workers=0, pixels=48,
                         progress=False)
    with dataset.open_dataset(path) as ds:
        assert ds.classes == dataset.ALL_CLASSES
        ice = ds.labels == 5
        assert ice.sum() == 4  # 10 % of 40
        assert np.all(ds.column("ice_contrast")[ice] >= ds.config.cuts.ice_contrast)
        assert np.all(ds.column("ice_thickness_um")[~ice] == 0)


def test_command_line_generate_and_export(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert cli.main(["generate", "--n", "8", "--seed", "1", "--out", str(out), "--workers", "0", "--pixels", "32",
                     "--no-progress"]) == 0
    assert "8 images of 32×32" in capsys.readouterr().out
    assert cli.main(["export", "--data", str(out), "--png", str(tmp_path / "png"), "--no-progress"]) == 0
    assert len(list((tmp_path / "png").glob("*/*/*.png"))) == 8
    assert cli.main(["generate", "--n", "0", "--out", str(tmp_path / "bad.h5"), "--workers", "0"]) == 2
    assert "n_images = 0" in capsys.readouterr().err


# --- Figures ----------------------------------------------------------------------------------------------


def test_the_chapter_figures_draw_from_a_built_set(tiny):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffranb import viz

    with dataset.open_dataset(tiny) as ds:
        names = ds.label_names()
        axes = viz.plot_gallery([ds.image8(i) for i in range(6)], list(names[:6]), ncols=4)
        assert len(axes) == 8 and sum(len(ax.images) > 0 for ax in axes) == 6
        assert all(im.get_clim() == (0, 255) for ax in axes[:6] for im in ax.images)  # one grey scale
        ax = viz.plot_class_quantity(ds.column("n_significant"), names, ("weak", "good", "strong"), cuts=(5, 40, 150))
        assert len(ax.lines) == 3 and ax.get_xscale() == "log"
        ax = viz.plot_by_class(ds.column("crystal_size_um"), names, ds.classes, log=True, xlabel="size (µm)")
        assert len(ax.patches) == 3  # one outline per crystal class
        ax = viz.plot_class_shares(ds.counts(), dict(zip(ds.classes, ds.config.shares)))
        assert len(ax.patches) == 3 * 5
        with pytest.raises(ValueError, match="8-bit"):
            viz.plot_gallery([ds.image(0)], ["raw"])
    plt.close("all")


def test_ideal_counter_counts_everything_bright_and_nothing_faint(tiny):
    with dataset.open_dataset(tiny) as ds:
        counter = dataset.IdealCounter.for_dataset(ds, seed=1)
        crystal = np.flatnonzero(ds.column("has_crystal") == 1)
        assert len(crystal)
        for i in crystal:
            row = ds.row(int(i))
            scene = dataset.scene_from_params(row, ds.config.pixels, ds.config.ranges)
            table = dataset.reflection_table(scene)
            visible = int(np.count_nonzero(table["photons_per_block"] > 0))
            kw = dict(pixels=ds.config.pixels, ranges=ds.config.ranges)
            # a crystal 10⁶ times larger: every reflection whose signal then exceeds 100× its threshold signal
            # (I/σ ≈ 3·√100 = 30 at least) must count; the far tails of the rest may or may not
            blocks = row["n_blocks"] * 1e6
            certain = int(np.count_nonzero(100.0 * table["threshold_blocks"] <= blocks))
            huge = counter.measured_count(row | {"n_blocks": blocks}, int(i), **kw)
            assert 0 < certain <= huge <= visible
            # 10⁶ times smaller: what is left is noise, which passes 3σ for about one reflection in a thousand
            tiny_count = counter.measured_count(row | {"n_blocks": row["n_blocks"] * 1e-6}, int(i), **kw)
            assert tiny_count <= 2 + 0.01 * len(table["h"])
            # the same frame and seed measure the same count
            assert counter.measured_count(row, int(i), **kw) == counter.measured_count(row, int(i), **kw)


def test_ideal_counter_evaluates_like_a_model(tiny, capsys):
    import json

    with dataset.open_dataset(tiny) as ds:
        codes = dataset.IdealCounter.for_dataset(ds).predict_dataset(ds, np.arange(len(ds)))
        empty = ds.column("has_crystal") == 0
        np.testing.assert_array_equal(codes[empty], ds.labels[empty])  # blank and no-crystal are exact
        assert np.all(codes[~empty] >= 1)
    assert cli.main(["evaluate", "--ideal-counter", "--data", str(tiny), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["n"] == int(np.sum(ds.split == 2)) and 0 <= result["accuracy"] <= 1
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--ideal-counter", "--model", "x", "--data", str(tiny)])


# --- The ideal counter's estimators ---------------------------------------------------------------------


def synthetic_frame(n_reflections=3000, seed=0):
    """Per-block signals spread like a crystal's (exponential intensities times a wide partiality), a box
    variance of 40 photons², and a crystal size that puts a few hundred reflections above 3σ."""
    rng = np.random.default_rng(seed)
    per_block = rng.exponential(1.0, n_reflections) * rng.lognormal(0.0, 1.5, n_reflections)
    floor = np.full(n_reflections, 40.0)
    return per_block, floor, 4.0


def measure_synthetic(per_block, floor, blocks, rng):
    signal = per_block * blocks
    return rng.poisson(signal + floor) - floor  # the floor drawn as Poisson photons, like read-out noise


def test_significance_threshold_is_where_signal_over_noise_is_k():
    floor = np.array([0.0, 1.0, 40.0, 1e4])
    for k in (1.0, 3.0, 5.0):
        s = dataset.significance_threshold(floor, k)
        np.testing.assert_allclose(s / np.sqrt(s + floor), k, rtol=1e-12)


def test_fit_blocks_recovers_the_crystal_volume():
    per_block, floor, blocks = synthetic_frame()
    assert dataset.fit_blocks(per_block, per_block * blocks, floor) == pytest.approx(blocks, rel=1e-8)
    assert dataset.fit_blocks(np.zeros(3), np.ones(3), np.ones(3)) == 0.0
    assert dataset.fit_blocks(per_block, -per_block, floor) == 0.0  # never a negative crystal
    with pytest.raises(ValueError, match="> 0"):
        dataset.fit_blocks(per_block, per_block, np.zeros_like(floor))
    rng = np.random.default_rng(5)
    fits = np.array([dataset.fit_blocks(per_block, measure_synthetic(per_block, floor, blocks, rng), floor)
                     for _ in range(300)])
    # the spread of an efficient estimator: the Fisher bound 1/√Σ p²/(n·p + floor)
    bound = 1.0 / math.sqrt(np.sum(per_block**2 / (blocks * per_block + floor)))
    assert abs(fits.mean() - blocks) < 4 * bound / math.sqrt(len(fits))
    assert fits.std() == pytest.approx(bound, rel=0.2)


def test_level_counts_agree_with_the_count_and_fall_with_the_level(tiny):
    with dataset.open_dataset(tiny) as ds:
        kw = dict(pixels=ds.config.pixels, ranges=ds.config.ranges)
        count = dataset.IdealCounter.for_dataset(ds, seed=2)
        scale = dataset.IdealCounter.for_dataset(ds, seed=2, method="scale")
        crystal = np.flatnonzero(ds.column("has_crystal") == 1)
        assert len(crystal)
        for i in crystal:
            row = ds.row(int(i))
            levels = count.level_counts(row, int(i), **kw)
            assert levels.shape == (len(dataset.IDEAL_LEVELS),) and np.all(np.diff(levels) <= 0)
            assert levels[dataset.IDEAL_LEVELS.index(3.0)] == count.measured_count(row, int(i), **kw)
            # a crystal 10⁴ times larger: the scale fit pins its volume and counts (nearly) the truth
            big = row | {"n_blocks": row["n_blocks"] * 1e4}
            table, _, measured = scale.measure(big, int(i), **kw)
            fitted = dataset.fit_blocks(table["photons_per_block"], measured, table["noise_floor"])
            assert fitted == pytest.approx(big["n_blocks"], rel=0.02)
            truth = dataset.count_significant(table, big["n_blocks"])[0]
            assert abs(scale.measured_count(big, int(i), **kw) - truth) <= max(2, 0.02 * truth)
        assert not count.level_counts(ds.row(int(np.flatnonzero(ds.column("has_crystal") == 0)[0])), 0, **kw).any()
    with pytest.raises(ValueError, match="method"):
        dataset.IdealCounter(dataset.CLASSES, method="guess")


def test_the_calibrated_counter_learns_its_cuts_from_the_training_split(tmp_path, monkeypatch, capsys):
    import json

    path = dataset.build(150, 8, tmp_path / "calibration.h5", pixels=128, workers=0, progress=False)
    with dataset.open_dataset(path) as ds:
        counter = dataset.IdealCounter(ds.classes, ds.config.cuts, seed=0, method="calibrated")
        # what it learns from: the training split's crystal frames, nothing else
        seen = []
        level_counts = dataset.IdealCounter.level_counts

        def spy(self, row, index, **kw):
            seen.append(int(index))
            return level_counts(self, row, index, **kw)

        monkeypatch.setattr(dataset.IdealCounter, "level_counts", spy)
        dataset.IdealCounter(ds.classes, ds.config.cuts, method="calibrated").fit(ds)
        monkeypatch.undo()
        train = ds.indices("train")
        assert set(seen) == set(train[ds.column("has_crystal")[train] == 1])
        with pytest.raises(ValueError, match="fitted first"):
            counter.predict_dataset(ds, ds.indices("test"))
        with pytest.raises(ValueError, match="a class, not a count"):
            counter.measured_count(ds.row(0), 0)
        with pytest.raises(ValueError, match="learns nothing"):
            dataset.IdealCounter(ds.classes, method="count").fit(ds)
        assert counter.fit(ds) is counter and counter.classifier is not None
        train, test = ds.indices("train"), ds.indices("test")
        codes = counter.predict_dataset(ds, test)
        empty = ds.column("has_crystal")[test] == 0
        np.testing.assert_array_equal(codes[empty], ds.labels[test][empty])  # blank and no-crystal are exact
        # on the frames it learnt from, the learnt cuts do at least as well as the set's cuts on the 3σ count
        fitted = np.mean(counter.predict_dataset(ds, train) == ds.labels[train])
        counted = np.mean(dataset.IdealCounter.for_dataset(ds).predict_dataset(ds, train) == ds.labels[train])
        assert fitted >= counted
        assert counter.n_fitted == len(set(seen))
    # the command line fits it on the training split and refuses to test it there
    record = tmp_path / "calibrated.json"
    args = ["evaluate", "--ideal-counter", "calibrated", "--data", str(path), "--record", str(record)]
    assert cli.main(args) == 0
    saved = json.loads(record.read_text())
    assert f"fitted on the {counter.n_fitted} crystal frames of the training split" in saved["what"]
    assert saved["metrics"]["confusion"] == evaluate.metrics(ds.labels[test], codes, ds.classes)["confusion"]
    assert cli.main(args[:-2] + ["--split", "train"]) == 2 and "test it on val or test" in capsys.readouterr().err
    assert cli.main(args[:-1] + [str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_chooses_the_ideal_method_and_writes_its_record(tiny, tmp_path, capsys):
    import json

    for method in ("count", "scale"):
        record = tmp_path / f"{method}.json"
        args = ["evaluate", "--ideal-counter", method, "--data", str(tiny), "--json", "--record", str(record)]
        assert cli.main(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["n"] > 0 and 0 <= result["accuracy"] <= 1
        saved = json.loads(record.read_text())
        predictions = saved["metrics"].pop("predictions")  # kept in the record, not printed
        assert saved["metrics"] == result and saved["command"] == "diffranb " + " ".join(args)
        assert len(predictions) == result["n"] and set(predictions) <= set("01234")
        assert f"method {method}, noise seed 0" in saved["what"] and saved["wall_seconds"] > 0
        assert cli.main(args) == 2 and "refusing to overwrite" in capsys.readouterr().err  # kept as it was
        assert json.loads(record.read_text()) == saved | {"metrics": saved["metrics"] | {"predictions": predictions}}
    assert cli.main(["evaluate", "--data", str(tiny), "--ideal-counter"]) == 0
    assert "ideal-counter" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--ideal-counter", "guess", "--data", str(tiny)])


def test_two_records_are_compared_frame_by_frame(tiny, tmp_path, capsys):
    import json

    from scipy.stats import binomtest

    records = {}
    for method in ("count", "scale"):
        records[method] = tmp_path / f"{method}.json"
        assert cli.main(["evaluate", "--ideal-counter", method, "--data", str(tiny), "--record",
                         str(records[method]), "--no-progress"]) == 0
    capsys.readouterr()
    args = ["evaluate", "--paired", str(records["count"]), str(records["scale"]), "--data", str(tiny)]
    assert cli.main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with dataset.open_dataset(tiny) as ds:
        truth = ds.labels[ds.indices("test")]
        a, b = (np.array([int(c) for c in json.loads(records[m].read_text())["metrics"]["predictions"]])
                for m in ("count", "scale"))
        only_a, only_b = int(np.sum((a == truth) & (b != truth))), int(np.sum((b == truth) & (a != truth)))
        assert result["n"] == len(truth) and result["split"] == "test"
        assert (result["a"], result["b"]) == (str(records["count"]), str(records["scale"]))  # which is which
        (tmp_path / "paired.json").write_text(json.dumps({"comparisons": [{"command": "c", "result": result}]}))
        assert evaluate.load_paired(tmp_path / "paired.json") == {(result["a"], result["b"]): result}
        assert (result["classes"]["only_a"], result["classes"]["only_b"]) == (only_a, only_b)
        assert result["classes"]["accuracy_a"] == np.mean(a == truth)
        expected = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        assert result["classes"]["p_value"] == pytest.approx(expected)
        empty = np.isin(truth, [0, 1])
        assert result["binary"]["accuracy_b"] == np.mean(np.isin(b, [0, 1]) == empty)
        # a record against itself: nothing to tell them apart
        same = evaluate.paired(records["count"], records["count"], ds)
        assert same["classes"]["only_a"] == same["classes"]["only_b"] == 0 and same["classes"]["p_value"] == 1.0
        # what cannot be compared is refused
        old = json.loads(records["count"].read_text())
        del old["metrics"]["predictions"]
        (tmp_path / "old.json").write_text(json.dumps(old))
        with pytest.raises(ValueError, match="no predictions"):
            evaluate.paired(tmp_path / "old.json", records["scale"], ds)
        other = json.loads(records["count"].read_text())
        other["metrics"]["dataset_sha256"] = "0" * 64
        (tmp_path / "other.json").write_text(json.dumps(other))
        with pytest.raises(ValueError, match="tested set 0000"):
            evaluate.paired(tmp_path / "other.json", records["scale"], ds)
        bad = json.loads(records["count"].read_text())
        bad["metrics"]["predictions"] = bad["metrics"]["predictions"][:-1] + "7"  # no class 7 in this set
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="not label codes"):
            evaluate.paired(tmp_path / "bad.json", records["scale"], ds)
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert f"right only in A {only_a}, only in B {only_b}" in text
    assert f"A: {records['count']}" in text and f"B: {records['scale']}" in text
    assert evaluate.format_paired(result, "count", "scale").startswith("A: count\nB: scale\n")
    assert cli.main(args + ["--split", "test"]) == 0
    assert cli.main(args + ["--split", "val"]) == 2 and "tested the test split" in capsys.readouterr().err
    assert cli.main(args + ["--record", str(tmp_path / "r.json")]) == 2

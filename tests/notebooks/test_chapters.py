"""Every chapter, executed under papermill at small parameters, checked on the values it records."""

import json
import math

import nbformat
import pytest

from diffranb import evaluate

from chapters import REPO, chapter_path, run_chapter, run_notebook

pytestmark = pytest.mark.notebooks

REFERENCE = REPO.parent / "shared" / "reference"


def needs(name):
    return pytest.mark.skipif(not chapter_path(name).exists(), reason=f"book/{name}.ipynb is not written yet")


def test_run_notebook_injects_parameters_and_reads_glue(tmp_path):
    """The helper itself, on a two-cell notebook: what myst-nb's glue writes is what we read back."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("N: int = 3  # a count\nLABEL = 'x'  # a label",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, numpy as np\nfrom myst_nb import glue\n"
            "glue('twice', 2 * N, display=False)\nglue('half', np.float64(N) / 2, display=False)\n"
            "glue('missing', float('nan'), display=False)\nglue('cwd', os.getcwd(), display=False)\n"
            "glue('label', LABEL)\nopen('written.txt', 'w').close()"),
    ]
    source = tmp_path / "src" / "tiny.ipynb"
    source.parent.mkdir()
    nbformat.write(nb, source)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    values = run_notebook(source, run_dir, N=5)
    assert values["twice"] == 10
    assert values["half"] == 2.5
    assert math.isnan(values["missing"])
    assert values["label"] == "x"
    assert values["cwd"] == str(run_dir)
    assert (run_dir / "written.txt").exists() and not (source.parent / "written.txt").exists()


@needs("01_simulator_physics")
def test_simulator_physics(tmp_path):
    values = run_chapter("01_simulator_physics", tmp_path, N_PIXELS=128, MOSAIC_DOMAINS=50)
    print(f"chapter 1 render time at 128 px: {values['render_seconds']:.3f} s")
    assert values["spot_centroid_error_px"] < 0.1
    if REFERENCE.is_dir():
        assert values["reference_max_rel_error"] <= 1e-4
        # 50 Monte Carlo domains instead of the book's 1000: the per-spot agreement with nanoBragg's own
        # draws is looser than the README's 1000-domain criteria, the totals and positions are not.
        v3 = values["v3_spot_stats"]
        assert v3["n_compared"] > 100
        assert v3["total_ratio"] == pytest.approx(1.0, abs=0.05)
        assert v3["median_centroid_shift_px"] <= 0.3
        assert v3["median_rel_diff"] <= 0.25
    else:
        assert math.isnan(values["reference_max_rel_error"])
    assert isinstance(values["render_seconds"], float) and 0 < values["render_seconds"] < math.inf


@needs("02_dataset")
def test_dataset(tmp_path):
    full_build = REPO / "results" / "dataset" / "full_build.json"
    values = run_chapter("02_dataset", tmp_path, N_IMAGES=60, PIXELS=128, N_ICE_IMAGES=30, DATA_DIR=str(tmp_path),
                         FULL_BUILD=str(full_build))
    print(f"chapter 2 built 60 frames of 128² in {values['build_seconds']} s")
    assert values["n_images"] == 60
    assert (values["n_train"], values["n_val"], values["n_test"]) == (24, 6, 30)  # 40 / 9.6 / 50.4 %
    assert values["max_share_error"] < 0.05 and values["label_matches_target"] >= 0.9
    assert values["gallery_frames"] == 15  # three per class
    assert values["ice_share"] == 0.1 and (values["cut_weak"], values["cut_good"]) == (5, 40)
    assert (tmp_path / "diffranet_60_0_128px.h5").is_file() and (tmp_path / "diffranet_ice_30_0_128px.h5").is_file()
    for method in ("count", "calibrated", "scale"):
        assert 0 <= values[f"ideal_{method}_crystal_accuracy"] <= 100
    for method, name in (("count", "counter"), ("calibrated", "calibrated"), ("scale", "scale")):
        record = REPO / "results" / "dataset" / f"ideal_{name}_test.json"
        if record.is_file():  # the committed full-scale references, shown as they are
            accuracy = evaluate.accuracy_among(json.loads(record.read_text())["metrics"])
            assert values[f"full_{method}_crystal_accuracy"] == f"{100 * accuracy:.2f} %"
    if full_build.is_file():  # the chapter shows the committed full-build record as it is
        record = json.loads(full_build.read_text())
        assert values["full_build_minutes"] == round(record["wall_seconds"] / 60, 1)
        assert values["full_build_peak_gib"] == record["peak_rss_gib_all_processes"]


@needs("03_feature_extractors")
def test_feature_extractors(tmp_path):
    values = run_chapter("03_feature_extractors", tmp_path, N_IMAGES=60, PIXELS=128, DATA_DIR=str(tmp_path))
    print(f"chapter 3: GLCM {values['glcm_speedup']}× faster than scikit-image, features in "
          f"{values['extract_seconds']} s")
    assert values["glcm_max_abs_diff"] <= 1e-10 and values["lbp_equal"] is True
    assert set(values["first_look_accuracy"]) == {"glcm", "lbp", "sift", "spots"}
    assert all(0 <= a <= 1 for a in values["first_look_accuracy"].values())
    assert values["sift_median_keypoints"]["blank"] == 0  # nothing to detect on a detector-only frame
    cache = tmp_path / "diffranet_60_0_128px.h5.features"
    # blocks, SIFT descriptors, one vocabulary and its word table, the spot block with and without the
    # detector mask, and the mask
    assert sorted(p.name.split("-")[0] for p in next(cache.iterdir()).glob("*.npz")) == [
        "glcm", "lbp", "sift", "sift", "sift", "spots", "spots", "spots"]
    assert values["mask_pixels"] > 0 and values["floor_masked"] <= values["floor_unmasked"]


@needs("04_classic_tuning")
def test_classic_tuning(tmp_path):
    values = run_chapter("04_classic_tuning", tmp_path, N_IMAGES=60, PIXELS=128, N_TRIALS=6, N_SPOT_TRIALS=4,
                         DATA_DIR=str(tmp_path), FULL_RESULTS=str(REPO / "results" / "classic"),
                         SPOT_RESULTS=str(REPO / "results" / "classic-spots"),
                         WINDOW_RESULTS=str(REPO / "results" / "classic-spots-windows"),
                         STACK_RESULTS=str(REPO / "results" / "stacked-classic"),
                         FAST_RESULTS=str(REPO / "results" / "classic-spots-fast"))
    print(f"chapter 4: 6 trials in {values['search_seconds']} s, best {values['best_label']}")
    assert values["n_trials"] == 6 and sum(values["trials_by_label"].values()) == 6
    assert values["space_size"] == "470,450"
    assert 0 <= values["best_val_accuracy"] <= 100
    assert 0 <= values["test_accuracy_best"] <= 100 and 0 <= values["binary_accuracy_best"] <= 100
    for name in ("rf_glcm", "svm_glcm"):  # NaN when six trials never tried that pipeline
        assert math.isnan(values[f"test_accuracy_{name}"]) or 0 <= values[f"test_accuracy_{name}"] <= 100
    assert {"trials.json", "metrics.json", "search.png", "confusion.png", "models"} <= set(values["report_files"])
    if (REPO / "results" / "classic" / "metrics.json").is_file():
        assert set(values["full_accuracy"]) >= {"RF+GLCM", "SVM+GLCM", "best"}
    assert 0 <= values["spots_test_accuracy"] <= 100 and 0 <= values["spots_binary_accuracy"] <= 100
    spot_metrics = REPO / "results" / "classic-spots" / "metrics.json"
    if spot_metrics.is_file():  # the committed full-scale figure, shown as it is
        committed = json.loads(spot_metrics.read_text())["methods"]["best"]["test"]["accuracy"]
        assert values["spots_full_accuracy"] == round(100 * committed, 2)
    window_metrics = REPO / "results" / "classic-spots-windows" / "metrics.json"
    if window_metrics.is_file():
        committed = json.loads(window_metrics.read_text())["methods"]["best"]
        assert values["windows_full_accuracy"] == round(100 * committed["test"]["accuracy"], 2)
        assert values["windows_full_choice"].endswith(" px")
    # the forest and the SVM of this chapter's spot search, stacked on its validation frames (if it tried both)
    assert math.isnan(values["spot_stack_accuracy"]) or 0 <= values["spot_stack_accuracy"] <= 100
    stack_record = REPO / "results" / "stacked-classic" / "test.json"
    if stack_record.is_file():
        committed = json.loads(stack_record.read_text())["metrics"]
        assert values["stack_full_accuracy"] == round(100 * committed["accuracy"], 2)
        assert values["stack_full_binary"] == round(100 * committed["binary_accuracy"], 2)
        paired = json.loads((REPO / "results" / "stacked-classic" / "paired.json").read_text())["comparisons"]
        assert values["stack_p_against_forest"] == round(paired[0]["result"]["classes"]["p_value"], 3)
    fast = REPO / "results" / "classic-spots-fast"
    if (fast / "test-stacked.json").is_file():  # the cheap backgrounds: accuracy, speed and paired tests glued
        committed = json.loads((fast / "test-stacked.json").read_text())["metrics"]
        assert values["fast_stack_accuracy"] == round(100 * committed["accuracy"], 2)
        assert values["fast_stack_binary"] == round(100 * committed["binary_accuracy"], 2)
        forest = json.loads((fast / "metrics.json").read_text())["methods"]["best"]["test"]["accuracy"]
        assert values["fast_forest_accuracy"] == round(100 * forest, 2)
        runs = {run["name"]: run["figures"] for run in json.loads((fast / "bench.json").read_text())["runs"]}
        rate = runs["fast stack"]["frames_per_s_2proc"]
        slow = runs["three-window stack (baseline)"]["frames_per_s_2proc"]
        assert (values["fast_stack_rate"], values["slow_stack_rate"]) == (round(rate), round(slow))
        assert values["fast_stack_rate_1core"] == round(runs["fast stack"]["frames_per_s_1core"])
        assert values["fast_stack_speedup"] == round(rate / slow, 1)
        paired = evaluate.load_paired(fast / "paired.json")
        slow_fast = paired[("results/stacked-classic/test.json",
                            "results/classic-spots-fast/test-stacked.json")]["classes"]
        one_fast = paired[("results/classic-spots-windows/test-rf-spots-one-window.json",
                           "results/classic-spots-fast/test-stacked.json")]["classes"]
        assert values["fast_stack_behind"] == slow_fast["only_a"] - slow_fast["only_b"]
        assert values["fast_p_against_slow_stack"] == round(slow_fast["p_value"], 3)
        assert values["fast_stack_ahead_of_one_window"] == one_fast["only_b"] - one_fast["only_a"]
        assert values["fast_p_against_one_window"] == round(one_fast["p_value"], 3)
        screen = json.loads((fast / "screen.json").read_text())["sets"]
        assert values["screen_fast"] == round(100 * screen[2]["forest_val_accuracy_mean"], 2)


#: The committed full-scale DeepFreak runs chapter 5 compares with BOHB's winner.
OTHER_RUNS = ("deepfreak-hand", "deepfreak-bin2", "deepfreak-bin2-flip")


@needs("05_deepfreak")
def test_deepfreak(tmp_path):
    values = run_chapter("05_deepfreak", tmp_path, N_IMAGES=60, PIXELS=128, DATA_DIR=str(tmp_path), BINNING=2,
                         MAX_BUDGET=3.0, EPOCHS=2, THREADS=1, FULL_RESULTS=str(tmp_path / "no-full-run"),
                         OTHER_RESULTS=",".join(str(REPO / "results" / d) for d in OTHER_RUNS),
                         SPOT_RESULTS=str(REPO / "results" / "classic-spots"),
                         STACKED_RESULTS=str(REPO / "results" / "stacked"),
                         SPOT_NET_RESULTS=str(REPO / "results" / "deepfreak-bin2-spots"),
                         SPEED_RESULTS=str(REPO / "results" / "speed"))
    print(f"chapter 5: {values['n_evaluations']} BOHB evaluations in {values['search_minutes']} min, "
          f"{values['train_images_per_s']} training frames/s")
    assert values["n_topologies"] == 13 and values["chosen_gmacs"] == 14.14  # the paper's topology 8 at 512²
    assert values["n_evaluations"] == 4  # budgets 1 and 3 at eta 3: three configurations, the best promoted
    assert set(values["winner"]) == {"topology", "learning_rate", "momentum", "weight_decay", "batch_size"}
    assert 0 <= values["winner_val_accuracy"] <= 100 and 0 <= values["final_val_accuracy"] <= 100
    assert 1 <= values["best_epoch"] <= 2 and values["n_train"] == 24
    assert 0 <= values["test_accuracy"] <= 100 and 0 <= values["binary_accuracy"] <= 100
    assert 0 < values["max_rss_mib"] < 4096
    assert len(values["attention_peak"]) == 5 and all(0 <= p <= 1.000001 for p in values["attention_peak"])
    assert values["full_scale_committed"] is False
    committed = [d for d in OTHER_RUNS if (REPO / "results" / d / "metrics.json").is_file()]
    assert values["n_other_runs"] == len(committed)  # the other committed runs are compared all the same
    assert 0 <= values["stack_test_accuracy"] <= 100 and 0 <= values["stack_binary_accuracy"] <= 100
    # the stacked model sorting the test frames from PNGs agrees with it evaluated on the set
    assert values["sorted_png_agreement"] == values["stack_test_accuracy"]
    record = REPO / "results" / "stacked" / "test.json"
    if record.is_file():  # the committed full-scale figure, shown as it is
        metrics = json.loads(record.read_text())["metrics"]
        assert values["full_stack_accuracy"] == round(100 * metrics["accuracy"], 2)
    assert 0 <= values["spots_net_test_accuracy"] <= 100 and 0 <= values["spots_net_binary_accuracy"] <= 100
    record = REPO / "results" / "deepfreak-bin2-spots" / "metrics.json"
    if record.is_file():  # the committed full-scale figure, shown as it is
        committed = json.loads(record.read_text())
        assert values["full_spots_net_accuracy"] == round(100 * committed["test"]["accuracy"], 2)
        assert values["full_spots_net_binary"] == round(100 * committed["test"]["binary_accuracy"], 2)
        # the run the chapter's text describes
        described = {"input": "spots", "binning": 2, "bin_mode": "max", "flip": True, "epochs": 15}
        assert {k: committed["train_config"][k] for k in described} == described
    else:
        assert math.isnan(values["full_spots_net_accuracy"])
    record = REPO / "results" / "stacked" / "test-three.json"
    if record.is_file():
        metrics = json.loads(record.read_text())["metrics"]
        assert values["full_stack3_accuracy"] == round(100 * metrics["accuracy"], 2)
        assert values["full_stack3_binary"] == round(100 * metrics["binary_accuracy"], 2)
    from diffranb import bench, evaluate

    rows = bench.speed_table(REPO / "results" / "speed")
    if rows:  # the committed pipelines: the most accurate of those that keep up with the detector (one of them,
        # when several are equally accurate)
        kept_up = [(round(r["accuracy"], 2), round(r["processes"])) for r in rows
                   if r["processes"] >= evaluate.DETECTOR_RATE_HZ]
        best = max(a for a, _ in kept_up)
        assert (values["fast_best_accuracy"], values["fast_best_rate"]) in [(a, n) for a, n in kept_up if a == best]
    else:
        assert math.isnan(values["fast_best_accuracy"])

"""Feature extractors: hand-checked GLCMs and LBP codes, equality with scikit-image, the SIFT vocabulary's
training data, and the cache of whole data sets."""

import numpy as np
import pytest
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from diffranb import dataset, features

# scikit-image's documentation example: four grey levels on a 4 × 4 image
IMAGE_4X4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]], dtype=np.uint8)


def test_glcm_of_a_4x4_image_by_hand():
    # distance 1, angle 0: the 12 horizontal pairs are (0,0)×2, (0,1)×2, (1,1)×2, (0,2), (2,2)×3, (2,3),
    # (3,3); made symmetric they count 24, with gaps 1 (×6), 2 (×2) and 0 (the other 16)
    m = features.glcm_matrix(IMAGE_4X4, 1, 0)
    expected = np.zeros((256, 256))
    expected[:4, :4] = np.array([[4, 2, 1, 0], [2, 4, 0, 0], [1, 0, 6, 1], [0, 0, 1, 2]]) / 24
    np.testing.assert_array_equal(m, expected)
    contrast, dissimilarity, homogeneity, asm, energy, correlation = features.glcm_features(IMAGE_4X4, [1], [0])
    assert contrast == pytest.approx((6 * 1 + 2 * 4) / 24)
    assert dissimilarity == pytest.approx((6 * 1 + 2 * 2) / 24)
    assert homogeneity == pytest.approx((16 + 6 / 2 + 2 / 5) / 24)
    assert asm == pytest.approx((2 * 4**2 + 2 * 2**2 + 6**2 + 2**2 + 4 * 1**2) / 24**2)
    assert energy == pytest.approx(np.sqrt(asm))
    assert -1 <= correlation <= 1


def test_glcm_offsets_round_like_skimage():
    # 45° at distance 5 is (−3.54, 3.54) → (4, 4) with rows counted upward as skimage does
    assert features.glcm_offsets([1, 5], [0, 45, 90, 135]).tolist() == [
        [0, 1], [1, 1], [1, 0], [1, -1], [0, 5], [4, 4], [5, 0], [4, -4]]


def test_glcm_equals_skimage_to_1e10(tiny_set):
    rng = np.random.default_rng(1)
    with dataset.open_dataset(tiny_set) as ds:
        frames = [ds.image8(i) for i in range(0, 80, 8)]
    others = [rng.integers(0, 256, (40, 33)).astype(np.uint8), np.full((9, 9), 7, np.uint8), IMAGE_4X4]
    for k, image in enumerate(frames + others):
        g = graycomatrix(image, features.GLCM_DISTANCES, np.deg2rad(features.GLCM_ANGLES), 256, symmetric=True,
                         normed=True)
        reference = np.concatenate([graycoprops(g, p).ravel() for p in features.GLCM_PROPS])
        # ours sums integer counts exactly; skimage's float sums over 65536 cells carry ~1e-14 relative error,
        # which on white noise (contrast ≈ 10⁴) exceeds 1e-10 absolute: there the bound is relative
        tolerance = {"rtol": 0, "atol": 1e-10} if k < len(frames) else {"rtol": 1e-10, "atol": 1e-10}
        np.testing.assert_allclose(features.glcm_features(image), reference, **tolerance)


def test_glcm_subset_is_a_column_selection():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 30)).astype(np.uint8)
    full = features.glcm_features(image)
    cols = features.glcm_columns((2, 8), (45, 135))
    np.testing.assert_array_equal(full[cols], features.glcm_features(image, (2, 8), (45, 135)))
    with pytest.raises(ValueError, match="distance = 3"):
        features.glcm_columns((3,), (0,))


def test_lbp_of_a_bright_centre_by_hand():
    image = np.zeros((3, 3), np.uint8)
    image[1, 1] = 9
    # every neighbour of the centre is darker: no bit set, code 0; a dark pixel beside it sees it
    codes = features.lbp_image(image, 4, 1)
    assert codes[1, 1] == 0
    assert codes.dtype == np.uint8 and codes.max() <= 5


@pytest.mark.parametrize("points, radius", [(4, 1), (8, 1), (8, 2), (16, 2), (24, 3), (4, 3)])
def test_lbp_equals_skimage(points, radius):
    rng = np.random.default_rng(points * 10 + radius)
    for image in (rng.integers(0, 256, (37, 29)), rng.integers(0, 3, (20, 20)), np.full((8, 11), 5)):
        image = image.astype(np.uint8)
        np.testing.assert_array_equal(features.lbp_image(image, points, radius),
                                      local_binary_pattern(image, points, radius, "uniform"))


@pytest.mark.parametrize("points", features.LBP_POINTS)
def test_lbp_histogram_has_p_plus_2_bins_whatever_the_image(points):
    for image in (np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8),
                  np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)):
        h = features.lbp_histogram(image, points, 2)
        assert h.shape == (points + 2,) and h.sum() == pytest.approx(1.0)


def test_lbp_block_columns_match_single_histograms():
    image = np.random.default_rng(3).integers(0, 256, (24, 24)).astype(np.uint8)
    block = features._block_features(image[None], "lbp")[0]
    assert block.shape == (sum(3 * (p + 2) for p in features.LBP_POINTS),)
    np.testing.assert_array_equal(block[features.lbp_columns(16, 3)], features.lbp_histogram(image, 16, 3))


def test_vocabulary_words_and_histograms_by_hand():
    vocab = features.Vocabulary(np.stack([np.zeros(128), np.full(128, 200.0)]))
    descriptors = np.array([[1] * 128, [190] * 128, [5] * 128], dtype=np.uint8)
    assert vocab.words(descriptors).tolist() == [0, 1, 0]
    # frame 0 owns the first two, frame 1 none, frame 2 the last
    h = vocab.histograms(descriptors, [0, 2, 2, 3])
    np.testing.assert_array_equal(h, [[0.5, 0.5], [0.0, 0.0], [1.0, 0.0]])


def test_sift_of_a_blank_frame_is_the_zero_vector():
    vocab = features.Vocabulary(np.random.default_rng(0).uniform(0, 50, (10, 128)))
    x = features.extract("sift", np.zeros((2, 64, 64), np.uint8), vocabulary=vocab)
    assert x.shape == (2, 10) and not np.isnan(x).any() and (x == 0).all()


def test_extract_refuses_unknown_kinds_and_parameters():
    images = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="kind"):
        features.extract("hog", images)
    with pytest.raises(TypeError, match="radius"):
        features.extract("glcm", images, radius=3)
    assert features.extract("lbp", images, points=8, radius=1).shape == (1, 10)
    assert len(features.feature_names("glcm", distances=(1,), angles=(0, 90))) == 12


def test_vocabulary_is_fitted_on_the_training_split_only(tiny_set, tmp_path, monkeypatch):
    store = features.FeatureStore(tiny_set, tmp_path, workers=0, progress=False)
    descriptors, offsets = store.descriptors()
    seen = {}
    fit = features.Vocabulary.fit.__func__

    def spy(cls, d, k, **kw):
        seen["descriptors"] = np.array(d)
        return fit(cls, d, k, **kw)

    monkeypatch.setattr(features.Vocabulary, "fit", classmethod(spy))
    store.vocabulary(10)
    train = store.indices("train")
    expected = np.concatenate([descriptors[offsets[i]:offsets[i + 1]] for i in train])
    assert len(expected) < len(descriptors)  # other splits have descriptors too, and none were used
    np.testing.assert_array_equal(seen["descriptors"], expected)
    # every split is then described in the same words: the cached table equals the histograms of all frames
    np.testing.assert_array_equal(store.features("sift", k=10),
                                  store.vocabulary(10).histograms(descriptors, offsets))


def test_store_extracts_once_and_equals_in_memory_extraction(tiny_set, tmp_path, monkeypatch):
    store = features.FeatureStore(tiny_set, tmp_path, workers=2, chunk_size=16, progress=False)
    glcm = store.features("glcm", distances=(1, 4), angles=(0, 90))
    lbp = store.features("lbp", points=8, radius=2)
    with dataset.open_dataset(tiny_set) as ds:
        images = dataset.to_8bit(ds.images[:])
    np.testing.assert_array_equal(glcm, features.extract("glcm", images, distances=(1, 4), angles=(0, 90)))
    np.testing.assert_array_equal(lbp, features.extract("lbp", images, points=8, radius=2))
    files = sorted(p.name for p in store.dir.iterdir())
    assert any(f.startswith("glcm-") for f in files) and any(f.startswith("lbp-") for f in files)

    again = features.FeatureStore(tiny_set, tmp_path, workers=0, progress=False)
    monkeypatch.setattr(again, "_run", lambda *a: pytest.fail("re-extracted a cached block"))
    np.testing.assert_array_equal(again.features("glcm", distances=(1, 4), angles=(0, 90)), glcm)
    np.testing.assert_array_equal(again.features("lbp", points=24, radius=3)[:, :26],
                                  again.block("lbp")[:, features.lbp_columns(24, 3)])


def _ring_frame_with_spots(n_spots, seed=0, shape=(256, 256)):
    """Noisy 8-bit frame: a wide ring (as water gives) plus ``n_spots`` 3 × 3 spots far from each other."""
    rng = np.random.default_rng(seed)
    i, j = np.indices(shape)
    r = np.hypot(i - shape[0] / 2, j - shape[1] / 2)
    truth = 60.0 + 50.0 * np.exp(-0.5 * ((r - 70.0) / 15.0) ** 2)
    centres = [(20 + 27 * (k // 8), 20 + 27 * (k % 8)) for k in range(n_spots)]
    for ci, cj in centres:
        truth[ci - 1:ci + 2, cj - 1:cj + 2] += [[15, 30, 15], [30, 60, 30], [15, 30, 15]]
    return np.clip(np.rint(truth + rng.normal(0.0, 3.0, shape)), 0, 255).astype(np.uint8), centres


@pytest.mark.parametrize("n_spots", [0, 1, 17, 40])
@pytest.mark.parametrize("kernel, noise_range", [("box", (6.3, 8.0)), ("matched", (13.5, 18.0))])
def test_spot_statistics_count_spots_and_not_rings(n_spots, kernel, noise_range):
    image, centres = _ring_frame_with_spots(n_spots)
    z, background, noise = features.spot_significance(image, 5, kernel=kernel)
    # pixels of noise 3 weighted by w sum to noise 3·√Σw²: 9 for the box, 18 for the matched kernel; the local
    # median shares some of that noise and removes it, and simulations of this estimate without spots or ring
    # give 7.1 and 15.2 (a ring crowded with spots a little more)
    assert np.all((noise > noise_range[0]) & (noise < noise_range[1]))
    peaks = np.argwhere((z == features.max_3x3(z)) & (z >= 10))
    assert sorted(map(tuple, peaks)) == sorted(centres)
    counts = np.expm1(features.spot_features(image, 5, kernel=kernel))
    names = features.spot_names()
    assert len(counts) == len(names) == 25
    assert round(counts[names.index("peaks z≥10")]) == n_spots
    assert round(counts[names.index("peaks z≥64")]) == 0
    bands = [round(counts[names.index(f"peaks z≥10 band {b}")]) for b in range(features.SPOT_BANDS)]
    assert sum(bands) == n_spots


def test_a_matched_kernel_doubles_the_significance_of_a_one_pixel_spot():
    rng = np.random.default_rng(3)
    image = np.clip(np.rint(80.0 + rng.normal(0.0, 3.0, (192, 192))), 0, 255).astype(np.uint8)
    centres = [(12 + 24 * (k // 7), 12 + 24 * (k % 7)) for k in range(49)]
    for i, j in centres:
        image[i, j] += 30
    z = {k: features.spot_significance(image, 9, kernel=k)[0] for k in features.SPOT_KERNELS}
    at = tuple(np.array(centres).T)
    # one pixel's excess over the noise of the sum, √(Σw²)·σ: 4/√36 of it against 1/√9, twice as much; each
    # spot's z also holds one unit of noise, so the mean over 49 spots is known to about 5 %
    ratio = np.mean(z["matched"][at]) / np.mean(z["box"][at])
    assert 1.8 < ratio < 2.2
    with pytest.raises(ValueError, match="kernel = 'gauss'"):
        features.spot_significance(image, 9, kernel="gauss")


def _frames_and_masks(tiny_set, rng, step, n_spots, *extra):
    """Frames of the tiny set (every ``step``-th), a ring frame with ``n_spots`` spots, uniform noise, a flat
    frame and ``extra`` ones; each with its masks: none, a random fifth of the pixels, and the innermost rings
    (left with too few pixels for a noise of their own)."""
    with dataset.open_dataset(tiny_set) as ds:
        frames = [ds.image8(i) for i in range(0, 80, step)]
    frames += [_ring_frame_with_spots(n_spots)[0], rng.integers(0, 256, (96, 80)).astype(np.uint8),
               np.full((64, 64), 9, np.uint8), *extra]
    for image in frames:
        i, j = np.indices(image.shape)
        centre = np.hypot(i - image.shape[0] / 2, j - image.shape[1] / 2) <= image.shape[0] / 6
        yield image, (None, rng.random(image.shape) < 0.2, centre)


@pytest.mark.parametrize("kernel", ["box", "matched"])
def test_ring_noise_from_histograms_is_bit_identical_to_sorting(tiny_set, kernel):
    rng = np.random.default_rng(5)
    for k, (image, masks) in enumerate(_frames_and_masks(tiny_set, rng, 5, 17)):
        ring_mask = masks[2]
        for mask in masks:
            for window in features.SPOT_WINDOWS:
                sums = features.spot_sums(image, window, mask, kernel)[0]
                _, order, bounds, _ = features._annuli(sums.shape)
                kept = None if mask is None else ~mask.ravel()[order]
                fast = features._ring_noise(sums.ravel()[order], bounds, kept, kernel)
                sorted_ = features._ring_noise_by_sorting(sums.ravel()[order], bounds, kept, kernel)
                if mask is ring_mask:  # the masked centre's rings keep too few pixels for a noise of their own
                    assert np.isnan(sorted_[:2]).all()
                np.testing.assert_array_equal(fast, sorted_, err_msg=f"frame {k}")
    # the extreme sums (±9 × 255 for the box, ±16 × 255 for the matched kernel) land in the histogram's end bins
    limit = {"box": 9 * 255, "matched": 16 * 255}[kernel]
    assert features.sum_range(kernel) == limit
    sums = np.zeros((64, 64), np.float32)
    sums[::2] = limit
    sums[1::4] = -limit
    _, order, bounds, _ = features._annuli(sums.shape)
    np.testing.assert_array_equal(features._ring_noise(sums.ravel()[order], bounds, None, kernel),
                                  features._ring_noise_by_sorting(sums.ravel()[order], bounds, None, kernel))
    sums[0, 0] = limit + 1  # beyond any sum of an 8-bit frame: the histogram would misplace it
    with pytest.raises(ValueError, match="weighted sums"):
        features._ring_noise(sums.ravel()[order], bounds, None, kernel)


def test_median_filter_equals_opencv():
    import cv2

    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (61, 37)).astype(np.uint8), rng.integers(0, 3, (40, 50)).astype(np.uint8),
              np.full((20, 20), 255, np.uint8), rng.integers(0, 256, (3, 4)).astype(np.uint8),  # below a window
              _ring_frame_with_spots(17)[0], rng.integers(250, 256, (33, 33)).astype(np.uint8)]
    for image in images:
        for window in (3, 5, 7, 9):
            np.testing.assert_array_equal(features.median_filter(image, window), cv2.medianBlur(image, window),
                                          err_msg=f"{image.shape}, window {window}")
            if window in features.SPOT_WINDOWS:
                np.testing.assert_array_equal(features.median_background(image, window),
                                              cv2.medianBlur(image, window))
        # the iterated backgrounds: OpenCV's 5 × 5 median, taken two and three times over
        once = cv2.medianBlur(image, 5)
        twice = cv2.medianBlur(once, 5)
        np.testing.assert_array_equal(features.median_background(image, "5x2"), twice)
        np.testing.assert_array_equal(features.median_background(image, "5x3"), cv2.medianBlur(twice, 5))
        for windows in ((5, 9, "5x3"), ("5x3", "5x2", 5), ("5x2", 7)):  # in any order
            made = features.spot_backgrounds(image, windows)
            assert list(made) == list(windows)
            for w in windows:
                np.testing.assert_array_equal(made[w], {5: once, 7: cv2.medianBlur(image, 7),
                                                        9: cv2.medianBlur(image, 9), "5x2": twice,
                                                        "5x3": cv2.medianBlur(twice, 5)}[w])
    for image, window in ((np.zeros((9, 9), np.uint16), 3), (np.zeros((9, 9), np.uint8), 4),
                          (np.zeros((9, 9), np.uint8), 0), (np.zeros((2, 9, 9), np.uint8), 3)):
        with pytest.raises(ValueError):
            features.median_filter(image, window)


def test_spot_statistics_of_a_batch_are_the_same_on_one_thread_and_on_several():
    import numba

    from diffranb.threads import limited

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba may use one thread here")

    rng = np.random.default_rng(5)
    images = np.stack([_ring_frame_with_spots(k)[0] for k in range(6)])
    mask = rng.random(images.shape[1:]) < 0.05
    with limited(1):
        one = features.extract("spots", images, window=(5, "5x2", 9), mask=mask)
    with limited(2):
        assert numba.get_num_threads() == 2
        two = features.extract("spots", images, window=(5, "5x2", 9), mask=mask)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one[3], features.spot_block(images[3], (5, "5x2", 9), mask))


def test_spot_backgrounds_make_each_median_pass_once(monkeypatch):
    import cv2

    calls = []
    real = cv2.medianBlur

    def counted(image, size):
        calls.append(size)
        return real(image, size)

    monkeypatch.setattr(cv2, "medianBlur", counted)
    image = _ring_frame_with_spots(9)[0]
    for windows in ((5, "5x2", "5x3"), ("5x3", "5x2", 5), ("5x3", 5), ("5x2",)):
        calls.clear()
        features.spot_backgrounds(image, windows)
        assert calls == [5] * max(features.window_passes(w)[1] for w in windows), windows
    calls.clear()
    features.spot_block(image, features.SPOT_WINDOWS)  # 7 and 9 are diffranb's own filter, not OpenCV's
    assert calls == [5, 5, 5]
    for bad in ("5x4", "7x0", 3, "abc", True):
        with pytest.raises(ValueError, match="window"):
            features.spot_backgrounds(image, (5, bad))


def test_five_pixel_medians_taken_again_remove_spots_as_wider_windows_do():
    def left(edge, window):  # pixels of a square spot of edge × edge pixels left in the background
        image = np.full((31, 31), 40, np.uint8)
        image[13:13 + edge, 13:13 + edge] = 200
        return np.count_nonzero(features.median_background(image, window) != 40)

    assert [left(edge, 5) for edge in (3, 4, 5)] == [0, 4, 13]  # one pass leaves a plateau of 4 × 4 and 5 × 5
    for edge in (3, 4, 5):
        assert left(edge, "5x2") <= left(edge, 7)
        assert left(edge, "5x3") == left(edge, 9) == 0
    assert left(5, "5x2") < left(5, 5) and left(6, "5x3") < left(6, "5x2") < left(6, 5)


def test_float32_sums_and_means_equal_numpys_bit_for_bit():
    rng = np.random.default_rng(4)
    values = (rng.standard_normal(300_000) * 1e3).astype(np.float32) ** 2  # float32 sums that round
    for n in [0, 1, 7, 8, 9, 15, 16, 127, 128, 129, 136, 255, 256, 257, 1000, 4097, 65_536, 262_144, 299_999]:
        for start in (0, 3):
            part = values[start:start + n]
            assert features._pairwise_sum32(values, start, len(part)) == np.add.reduce(part), (n, start)
    # a mean: the float32 sum over the count in float64, then float32, as np.mean takes it (for counts below 2²⁴
    # the same as a float32 division)
    part = values[:262_143]
    assert np.float32(np.float64(features._pairwise_sum32(values, 0, len(part))) / len(part)) == np.mean(part)


@pytest.mark.parametrize("kernel", ["box", "matched"])
def test_compiled_spot_statistics_equal_numpy_and_opencv_bit_for_bit(tiny_set, kernel):
    rng = np.random.default_rng(8)
    tiny = [rng.integers(0, 256, shape).astype(np.uint8) for shape in ((1, 1), (1, 5), (5, 1), (2, 9))]
    for k, (image, masks) in enumerate(_frames_and_masks(tiny_set, rng, 4, 40, np.zeros((40, 40), np.uint8), *tiny)):
        everything = np.ones(image.shape, bool)  # no ring keeps a noise of its own
        for mask in (*masks, everything):
            for window in features.SPOT_WINDOWS:
                np.testing.assert_array_equal(features.spot_features(image, window, mask, kernel),
                                              features._spot_features_reference(image, window, mask, kernel),
                                              err_msg=f"frame {k}, window {window}")
    with pytest.raises(ValueError, match="mask"):
        features.spot_features(image, 5, np.zeros((3, 3), bool))


def test_grey_percentiles_from_histograms_equal_numpy():
    rng = np.random.default_rng(2)
    for n in [1, 2, 3, 4, 10, 11, 99, 100, 1001, 4096, 262144]:
        for top in (1, 7, 255):
            image = rng.integers(0, top + 1, n).astype(np.uint8)
            levels = np.bincount(image, minlength=256)
            for q in (0, 10, 50, 90, 100):
                expected = np.percentile(image, q)
                got = features._grey_percentile(levels, q)
                assert got == expected and isinstance(got, float), (n, top, q)
    for levels, q in ((np.zeros(256, np.int64), 50), (np.ones(256, np.int64), 101)):
        with pytest.raises(ValueError, match="grey levels"):
            features._grey_percentile(levels, q)


def test_spot_statistics_refuse_bad_input():
    with pytest.raises(ValueError, match="window"):
        features.spot_features(np.zeros((32, 32), np.uint8), 4)
    with pytest.raises(ValueError, match="uint8"):
        features.spot_features(np.zeros((32, 32)), 5)


def test_spot_block_holds_every_window():
    image = _ring_frame_with_spots(9)[0]
    block = features._block_features(image[None], "spots")
    assert block.shape == (1, len(features.SPOT_WINDOWS) * 25)
    for w in features.SPOT_WINDOWS:
        np.testing.assert_array_equal(block[0, features.spot_columns(w)], features.spot_features(image, w))
    np.testing.assert_array_equal(features.extract("spots", image[None]), block[:, features.spot_columns(5)])
    both = features.extract("spots", image[None], window=(9, 5))  # a set of windows, side by side, in order
    np.testing.assert_array_equal(both, block[:, np.r_[features.spot_columns(5), features.spot_columns(9)]])
    np.testing.assert_array_equal(features.spot_columns((5, 9)), np.r_[features.spot_columns(5),
                                                                       features.spot_columns(9)])
    names = features.feature_names("spots", window=(5, 9))
    assert len(names) == both.shape[1] == 50 and names[0].startswith("w5 ") and names[25].startswith("w9 ")
    # iterated medians: their own columns, made from the same medians as one by one
    fast = features.extract("spots", image[None], window=("5x3", 5, "5x2"))
    assert features.spot_windows(("5x3", 5, "5x2")) == (5, "5x2", "5x3")
    np.testing.assert_array_equal(fast, block[:, features.spot_columns((5, "5x2", "5x3"))])
    np.testing.assert_array_equal(fast[0], np.concatenate([features._spot_features_reference(image, w)
                                                           for w in (5, "5x2", "5x3")]))
    assert features.feature_names("spots", window=(5, "5x2"))[25].startswith("w5x2 ")
    for bad in ((), (5, 5), (5, 4), 4, "5", "5x4", "9x2", True, (5, True), 5.0):
        with pytest.raises(ValueError, match="window"):
            features.extract("spots", image[None], window=bad)


def _detector_frames(n, *, lit=True, seed=0, shape=(96, 96)):
    """Frames of one detector: noise on a level of 60 (lit) or about 2 (dark), one hot pixel (255) and one dead
    pixel (0) always, a beamstop shadow that moves from frame to frame, and one bright spot in frame 0 only."""
    rng = np.random.default_rng(seed)
    i, j = np.indices(shape)
    frames = []
    for k in range(n):
        level = 60.0 if lit else 2.0
        frame = level + rng.normal(0.0, 3.0, shape)
        centre = (48 + (k % 3) - 1, 48)  # the beamstop: a disc of radius 6, one pixel up or down per run
        frame[np.hypot(i - centre[0], j - centre[1]) <= 6] = rng.normal(1.0, 1.0)
        frame[10, 20], frame[70, 80] = 255, 0
        if k == 0:
            frame[30, 30] = 255
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_detector_mask_finds_hot_dead_and_shadowed_pixels_and_nothing_else():
    frames = _detector_frames(20)
    mask = features.detector_mask(frames)
    i, j = np.indices(mask.shape)
    assert mask[10, 20] and mask[70, 80]  # hot, dead
    assert not mask[30, 30]  # saturated in one frame of twenty: a spot, not a hot pixel
    # every shadow seen (discs of radius 6 about rows 47 to 49), grown by the margin, and nothing beyond it
    reach = 6 + features.SHADOW_MARGIN_PX
    union = (np.hypot(i - 47, j - 48) <= 6) | (np.hypot(i - 48, j - 48) <= 6) | (np.hypot(i - 49, j - 48) <= 6)
    assert mask[union].all()
    outside = np.hypot(np.minimum(np.abs(i - 47), np.abs(i - 49)) * (np.abs(i - 48) > 1), j - 48) > reach + 1.5
    assert not mask[outside & ~np.isin(i * 96 + j, [10 * 96 + 20, 70 * 96 + 80])].any()


def test_detector_mask_without_lit_frames_finds_only_hot_pixels():
    mask = features.detector_mask(_detector_frames(10, lit=False))
    assert mask[10, 20] and mask.sum() == 1
    with pytest.raises(ValueError, match="uint8"):
        features.detector_mask(np.zeros((0, 8, 8), np.uint8))


def test_masked_hot_pixel_gives_no_peak_and_real_spots_still_count():
    image, centres = _ring_frame_with_spots(5)
    hot = image.copy()
    hot[200, 60] = 255
    names = features.spot_names()
    mask = np.zeros(image.shape, bool)
    mask[200, 60] = True
    count = lambda im, m: round(np.expm1(features.spot_features(im, 5, m))[names.index("peaks z≥10")])
    # a hot pixel looks like a spot, or several: the nine 3 × 3 sums holding it tie, and ties are all maxima
    assert count(image, None) == 5 and count(hot, None) > 5
    assert count(hot, mask) == 5
    z, _, _ = features.spot_significance(hot, 5, mask)
    assert z[200, 60] == 0.0
    np.testing.assert_array_equal(features.extract("spots", hot[None], mask=mask)[0],
                                  features.spot_features(hot, 5, mask))
    with pytest.raises(ValueError, match="mask"):
        features.spot_features(hot, 5, mask[:10])


def test_store_mask_is_learnt_from_the_training_frames_and_names_the_spot_block(tiny_set, tmp_path):
    store = features.FeatureStore(tiny_set, tmp_path, workers=0, progress=False)
    train = store.indices("train")
    assert 0 < len(train) <= features.MASK_FRAMES  # so the mask sees every training frame
    with dataset.open_dataset(tiny_set) as ds:
        images = dataset.to_8bit(ds.images[:])
    np.testing.assert_array_equal(store.mask(), features.detector_mask(images[train]))
    masked = store.features("spots", window=7)
    np.testing.assert_array_equal(masked, features.extract("spots", images, window=7, mask=store.mask()))
    plain = store.features("spots", window=7, mask=None)
    np.testing.assert_array_equal(plain, features.extract("spots", images, window=7))
    assert store.mask().any() and not np.array_equal(masked, plain)  # the beamstop's shadow, at least
    # one cached block per mask, beside the mask itself
    blocks = [p.name for p in store.dir.glob("spots-*.npz") if not p.name.startswith("spots-mask-")]
    assert len(blocks) == 2 and len(list(store.dir.glob("spots-mask-*.npz"))) == 1


def test_masked_pixels_stay_out_of_the_noise_and_fully_masked_rings_borrow_it():
    image, _ = _ring_frame_with_spots(0)
    i, j = np.indices(image.shape)
    mask = np.hypot(i - 127.5, j - 127.5) <= 30  # the two innermost rings wholly, the third in part
    _, _, plain = features.spot_significance(image, 5)
    z, _, noise = features.spot_significance(image, 5, mask)
    # masked box sums are zero: counted in, they would shrink the noise of the rings they fill, and the pixels
    # left in those rings would stand out as spots
    assert np.all(np.abs(noise / np.median(plain) - 1) < 0.2)
    assert noise[0] == noise[1] == noise[2] != noise[3]  # rings 0 and 1 hold no unmasked pixel: ring 2's noise
    assert np.count_nonzero((z >= features.max_3x3(z)) & (z >= 5)) == 0

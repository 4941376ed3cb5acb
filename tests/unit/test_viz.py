import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from diffranb import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def spot_image(shape=(6, 10)):
    """A flat background of 1 photon with one 10⁴-photon pixel at (slow, fast) = (2, 7)."""
    image = np.ones(shape, dtype=np.float32)
    image[2, 7] = 1e4
    return image


@pytest.mark.parametrize("scale", viz.SCALES)
def test_show_pattern_draws_the_image_with_labelled_axes(scale):
    image = spot_image()
    ax = viz.show_pattern(image, scale=scale, unit="ADU")
    (im,) = ax.get_images()
    np.testing.assert_array_equal(im.get_array(), image)
    assert ax.get_xlabel() == "fast (px)"
    assert ax.get_ylabel() == "slow (px)"
    assert ax.get_title() == ""
    colorbar_axes = [a for a in ax.figure.axes if a is not ax]
    assert [a.get_ylabel() for a in colorbar_axes] == ["ADU"]


def test_show_pattern_puts_slow_down_and_fast_across():
    ax = viz.show_pattern(spot_image(), colorbar=False)
    left, right, bottom, top = ax.get_images()[0].get_extent()
    assert (left, right) == (-0.5, 9.5)  # pixel i centred at coordinate i along fast
    assert (top, bottom) == (-0.5, 5.5)  # slow increases downwards


def test_show_pattern_marks_the_beam_center_at_fast_slow():
    ax = viz.show_pattern(spot_image(), beam_center=(2.0, 7.0), colorbar=False)
    (marker,) = ax.get_lines()
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (7.0, 2.0)


def test_show_pattern_draws_into_the_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    assert viz.show_pattern(spot_image(), ax=b, colorbar=False) is b
    assert not a.get_images()


def test_show_pattern_rejects_a_stack():
    with pytest.raises(ValueError, match="2-D"):
        viz.show_pattern(np.zeros((2, 3, 3)))


def test_relative_difference_is_signed_and_masks_faint_reference_pixels():
    ref = np.array([[10.0, 0.5], [4.0, 2.0]])
    ours = np.array([[11.0, 9.0], [3.0, 2.0]])
    diff = viz.relative_difference(ours, ref, floor=1.0)
    assert diff.mask.tolist() == [[False, True], [False, False]]
    np.testing.assert_allclose(diff.compressed(), [0.1, -0.25, 0.0])


def test_plot_difference_shows_the_relative_difference_with_symmetric_limits():
    ref = np.full((4, 4), 10.0)
    ours = ref.copy()
    ours[1, 2] = 12.0
    ax = viz.plot_difference(ours, ref)
    im = ax.get_images()[0]
    assert im.get_array()[1, 2] == pytest.approx(0.2)
    assert im.get_clim() == pytest.approx((-0.2, 0.2))
    assert ax.get_xlabel() == "fast (px)"
    assert "reference" in ax.figure.axes[-1].get_ylabel()


def test_plot_radial_profile_draws_one_labelled_line_per_profile():
    x = np.linspace(0.05, 0.5, 20)
    ax = viz.plot_radial_profile({"ours": (x, x**2), "nanoBragg": (x, 1.1 * x**2)})
    assert [line.get_label() for line in ax.get_lines()] == ["ours", "nanoBragg"]
    assert ax.get_xlabel() == "sinθ/λ (Å⁻¹)"
    assert ax.get_ylabel() == "photons / pixel"
    assert ax.get_legend() is not None


def test_default_vmax_ignores_a_few_hot_pixels():
    image = np.ones((100, 100))
    image[0, :5] = 1e6
    assert viz.default_vmax(image) == 1.0
    assert viz.default_vmax(np.zeros((3, 3))) == 1.0


@pytest.mark.parametrize("scale", viz.SCALES)
def test_png_has_the_image_shape_and_the_gray_r_colours(scale):
    image = spot_image()
    png = viz.to_png_bytes(image, scale=scale, vmax=1e4)
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.shape == (6, 10, 3)
    assert decoded[2, 7].tolist() == [0, 0, 0]  # the spot, at vmax, is black with gray_r
    assert decoded[0, 0, 0] > 200  # 1 photon in 10⁴ is close to white on every scale


def test_png_and_show_pattern_use_the_same_map():
    image = np.linspace(0, 50, 60, dtype=np.float32).reshape(6, 10)
    png = np.asarray(Image.open(io.BytesIO(viz.to_png_bytes(image, "sqrt", 50.0, cmap="gray"))))
    expected = np.rint(np.sqrt(image / 50.0) * 255)
    np.testing.assert_allclose(png[..., 0], expected, atol=1)


def test_norm_rejects_unknown_scales_and_nonpositive_vmax():
    with pytest.raises(ValueError, match="scale"):
        viz.norm("cube", 1.0)
    with pytest.raises(ValueError, match="vmax"):
        viz.norm("sqrt", 0.0)


def test_mark_spots_circles_slow_fast_positions_at_fast_slow():
    ax = viz.mark_spots([[2.0, 7.0], [4.0, 1.0]])
    (points,) = ax.collections
    np.testing.assert_array_equal(points.get_offsets(), [[7.0, 2.0], [1.0, 4.0]])


def test_show_map_spans_the_values_own_range():
    values = np.array([[1.00, 1.02], [1.04, 1.06]])
    ax = viz.show_map(values, unit="Ω (sr)")
    assert ax.get_images()[0].get_clim() == pytest.approx((1.0, 1.06))
    assert ax.figure.axes[-1].get_ylabel() == "Ω (sr)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("fast (px)", "slow (px)")


def test_ewald_section_fills_only_points_on_the_sphere():
    # λ = 1 Å: the sphere has radius 1 Å⁻¹ about (−1, 0); (−1, 1) and the origin lie on it, (0.5, 0) does not.
    ax = viz.plot_ewald_section([[-1.0, 1.0], [0.0, 0.0], [0.5, 0.0]], wavelength_A=1.0)
    off, on = ax.collections
    np.testing.assert_array_equal(off.get_offsets(), [[0.5, 0.0]])
    np.testing.assert_array_equal(on.get_offsets(), [[-1.0, 1.0], [0.0, 0.0]])
    assert "Å⁻¹" in ax.get_xlabel() and "Å⁻¹" in ax.get_ylabel()


def test_label_panel_writes_in_the_top_left_corner():
    _, ax = plt.subplots()
    viz.label_panel(ax, "(a)")
    (text,) = ax.texts
    assert text.get_text() == "(a)" and text.get_position() == (0.03, 0.97)


def test_plot_spot_peaks_circles_each_injected_spot_at_fast_slow():
    rng = np.random.default_rng(2)
    image = np.clip(np.rint(80 + rng.normal(0, 3, (96, 96))), 0, 255).astype(np.uint8)
    for i, j in ((20, 70), (60, 30)):
        image[i - 1:i + 2, j - 1:j + 2] += np.array([[15, 30, 15], [30, 60, 30], [15, 30, 15]], dtype=np.uint8)
    ax = viz.plot_spot_peaks(image, level=10.0)
    centres = sorted(tuple(map(float, p.center)) for p in ax.patches)
    assert centres == [(30.0, 60.0), (70.0, 20.0)]
    mask = np.zeros(image.shape, bool)
    mask[59:62, 29:32] = True  # masking a spot's pixels removes its peak, and the mask is drawn over the frame
    ax = viz.plot_spot_peaks(image, level=10.0, mask=mask)
    assert [tuple(map(float, p.center)) for p in ax.patches] == [(70.0, 20.0)]
    overlay = ax.get_images()[1].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(overlay), ~mask)


def test_show_map_puts_slow_down_and_fast_across_like_show_pattern():
    ax = viz.show_map(spot_image(), colorbar=False)
    left, right, bottom, top = ax.get_images()[0].get_extent()
    assert (left, right, top, bottom) == (-0.5, 9.5, -0.5, 5.5)
    assert ax.figure.axes == [ax]


def test_show_map_draws_into_the_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    assert viz.show_map(spot_image(), ax=b) is b
    assert not a.get_images()


def test_show_map_and_show_pattern_name_their_own_argument_when_rejecting_a_stack():
    with pytest.raises(ValueError, match=r"^values\.shape=\(2, 3, 3\)"):
        viz.show_map(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"^image\.shape=\(2, 3, 3\)"):
        viz.show_pattern(np.zeros((2, 3, 3)))


def test_plot_confusions_draws_one_labelled_panel_per_result():
    from diffranb import evaluate

    classes = ("blank", "no-crystal", "weak")
    truth = np.array([0, 1, 2, 2, 1, 0])
    results = {"count": evaluate.metrics(truth, np.array([0, 1, 2, 1, 1, 0]), classes),
               "scale": evaluate.metrics(truth, truth, classes)}
    axes = viz.plot_confusions(results)
    assert len(axes) == 2
    assert axes[0].get_xlabel().endswith("count: 83.33 %") and axes[1].get_xlabel().endswith("scale: 100.00 %")
    assert axes[0].images[0].get_array()[2, 1] == 50  # row percentages: one of two weak frames went to no-crystal
    with pytest.raises(ValueError, match="as many axes"):
        viz.plot_confusions(results, axes=axes[:1])
    with pytest.raises(ValueError, match="no results"):
        viz.plot_confusions({})


def test_plot_speed_accuracy_puts_each_pipeline_at_its_speed_and_accuracy():
    points = {"fast": (400.0, 96.6), "slow": (60.0, 97.3)}
    ax = viz.plot_speed_accuracy(points, rate_hz=130, target=98.51)
    xy = [tuple(line.get_xydata()[0]) for line in ax.lines if line.get_marker() == "o"]
    assert xy == [(400.0, 96.6), (60.0, 97.3)]
    assert [t.get_text() for t in ax.texts] == ["fast", "slow"]
    assert ax.get_xscale() == "log"
    vertical = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(vertical) == 1 and vertical[0].get_xdata()[0] == 130
    lo, hi = ax.get_xlim()  # the detector's line and room for the fastest pipeline's label
    assert lo < 60 and hi > 1.5 * 400
    assert ax.xaxis.get_major_formatter()(100, 0) == "100"  # plain frame rates, not 10²
    ax = viz.plot_speed_accuracy(points, rate_hz=20)
    assert ax.get_xlim()[0] < 20
    with pytest.raises(ValueError, match="no pipeline"):
        viz.plot_speed_accuracy({})
    with pytest.raises(ValueError, match="'broken'"):
        viz.plot_speed_accuracy({"broken": (0.0, 90.0)})

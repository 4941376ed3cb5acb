"""The simulator explorer, served by Voila and used from headless Chromium as a reader would."""

import os
import signal
import subprocess
import time
import urllib.request

import nbformat
import pytest

from servers import executable, free_port

pytestmark = pytest.mark.browser

IMAGE = "img.widget-image"
STARTUP_S = 120  # Voila start, kernel start and the first render (numba compiles on a cold cache)


def wait_until_serving(url: str, proc: subprocess.Popen, log, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"voila exited with {proc.returncode}:\n{log.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"voila did not answer at {url} within {timeout} s")


@pytest.fixture
def voila_url(browser, tmp_path):
    """A notebook that shows ``widgets.explore_simulator()``, served by Voila on 127.0.0.1; stopped after."""
    voila = executable("voila")
    if voila is None:
        pytest.skip("voila is not installed")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("from diffranb import widgets\nwidgets.explore_simulator()")]
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    port = free_port()
    cmd = [voila, "explorer.ipynb", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--show_tracebacks=True"]
    with open(tmp_path / "voila.log", "w+") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_serving(url, proc, log, timeout=60)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # Voila and the kernels it started, nothing else
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_moving_a_slider_redraws_the_frame(voila_url, page, tmp_path):
    page.goto(voila_url)
    image = page.locator(IMAGE)
    image.wait_for(state="visible", timeout=STARTUP_S * 1000)
    page.wait_for_function("sel => { const i = document.querySelector(sel); return i && i.naturalWidth > 0; }",
                           arg=IMAGE, timeout=STARTUP_S * 1000)
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=tmp_path / "explorer_before.png", full_page=True)
    before = image.get_attribute("src")
    status = page.locator(".widget-label", has_text="rendered in")
    assert status.count() == 1

    slider = page.locator(".widget-slider", has_text="distance (mm)")
    readout = slider.locator(".widget-readout").inner_text()
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")

    page.wait_for_function("([sel, old]) => document.querySelector(sel).src !== old", arg=[IMAGE, before],
                           timeout=60_000)
    page.wait_for_function("sel => document.querySelector(sel).naturalWidth > 0", arg=IMAGE, timeout=10_000)
    page.screenshot(path=tmp_path / "explorer_after.png", full_page=True)
    assert float(slider.locator(".widget-readout").inner_text()) > float(readout)
    assert "Traceback" not in page.inner_text("body")
    print(f"screenshots: {tmp_path}/explorer_*.png")

"""Build the book as `make book` does, then look at every page of it in headless Chromium."""

import subprocess

import pytest
from sphinx_external_toc.parsing import parse_toc_yaml

from servers import REPO, executable, start_static_server

pytestmark = pytest.mark.browser

PAGES = list(parse_toc_yaml(REPO / "_toc.yml"))  # root first, then the chapters in reading order
ERROR_OUTPUTS = ".output.traceback, .output.stderr, .output.error"


@pytest.fixture(scope="session")
def book_url(browser, tmp_path_factory):
    """Build the book (executing every chapter at its published parameters) and serve its HTML."""
    jupyter_book = executable("jupyter-book")
    if jupyter_book is None:
        pytest.skip("jupyter-book is not installed")
    out = tmp_path_factory.mktemp("book")
    cmd = [jupyter_book, "build", ".", "--path-output", str(out), "--warningiserror", "--keep-going"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"jupyter-book build failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
    server = start_static_server(out / "_build" / "html")
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("docname", PAGES)
def test_page_shows_its_figures_and_no_errors(docname, book_url, page, tmp_path):
    response = page.goto(f"{book_url}{docname}.html", wait_until="load")
    assert response is not None and response.ok, f"{docname}.html: HTTP {response and response.status}"
    shot = tmp_path / f"{docname.replace('/', '_')}.png"
    page.screenshot(path=shot, full_page=True)
    print(f"screenshot: {shot}")

    main = page.locator("main")
    assert "Traceback" not in main.inner_text()
    errors = page.locator(ERROR_OUTPUTS)
    assert errors.count() == 0, f"error output on {docname}: {errors.first.inner_text()[:500]}"
    if docname != PAGES[0]:
        widths = main.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert any(w > 0 for w in widths), f"{docname}: no figure drawn (image widths {widths})"

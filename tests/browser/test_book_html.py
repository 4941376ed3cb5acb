"""Build the book, then look at every page of it in headless Chromium.

The chapters are executed first under papermill at CI's small parameters (the published defaults take far
longer), then the book is built from those executed notebooks, with the same flags as `make book`.
"""

import importlib.util
import shutil
import subprocess

import pytest
import yaml
from sphinx_external_toc.parsing import parse_toc_yaml

from servers import REPO, executable, start_static_server

pytestmark = pytest.mark.browser

PAGES = list(parse_toc_yaml(REPO / "_toc.yml"))  # root first, then the chapters in reading order
ERROR_OUTPUTS = ".output.traceback, .output.stderr, .output.error"


def _chapters_module():
    spec = importlib.util.spec_from_file_location("chapters", REPO / "tests" / "notebooks" / "chapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def book_url(browser, tmp_path_factory):
    """Execute every chapter at small parameters, build the book from them and serve its HTML."""
    jupyter_book = executable("jupyter-book")
    if jupyter_book is None:
        pytest.skip("jupyter-book is not installed")
    chapters = _chapters_module()
    out = tmp_path_factory.mktemp("book")
    src, data, runs = out / "src", out / "data", out / "runs"
    shutil.copytree(REPO / "book", src / "book")
    shutil.copy(REPO / "_toc.yml", src / "_toc.yml")
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # executed just below, at small parameters
    (src / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True))
    data.mkdir()
    for docname in PAGES[1:]:
        name = docname.split("/")[-1]
        run = runs / name
        run.mkdir(parents=True)
        chapters.run_notebook(REPO / f"{docname}.ipynb", run, **chapters.small_parameters(name, data, REPO / "results"))
        shutil.copy(run / f"{name}.ipynb", src / f"{docname}.ipynb")
    cmd = [jupyter_book, "build", str(src), "--path-output", str(out), "--warningiserror", "--keep-going"]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
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
    text = main.inner_text()
    assert "Traceback" not in text
    # a figure glued into the prose must read as a number, not as NumPy's repr of one
    assert "np.float64(" not in text and "np.int64(" not in text, f"{docname}: a NumPy scalar glued as its repr"
    errors = page.locator(ERROR_OUTPUTS)
    assert errors.count() == 0, f"error output on {docname}: {errors.first.inner_text()[:500]}"
    # a Markdown table printed by a cell must come out as a table, not as a paragraph of pipes
    outputs = " ".join(main.locator(".cell_output").all_inner_texts())
    assert "|---|" not in outputs and "|—|" not in outputs, f"{docname}: a Markdown table left as text"
    if docname != PAGES[0]:
        widths = main.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert any(w > 0 for w in widths), f"{docname}: no figure drawn (image widths {widths})"

"""The house rules every book notebook must keep, checked without executing anything."""

import nbformat
import pytest
from sphinx_external_toc.parsing import parse_toc_yaml

from chapters import BOOK, REPO, chapter_parameters, check_injection, parameters_cells, parse_parameters

NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def toc_files():
    """Every document the book's table of contents lists, root first, as parsed by Jupyter Book."""
    return list(parse_toc_yaml(REPO / "_toc.yml"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_of_commented_literals(path):
    nb = nbformat.read(path, as_version=4)
    (cell,) = parameters_cells(nb)
    assert cell.cell_type == "code"
    assert parse_parameters(cell.source), "the parameters cell is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts: clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_table_of_contents(path):
    # only_build_toc_files would silently leave it out of the book
    assert f"book/{path.stem}" in toc_files()


def test_the_toc_starts_at_the_introduction():
    assert toc_files()[0] == "book/intro"
    assert (BOOK / "intro.md").is_file()


GOOD = "N_PIXELS: int = 512  # detector edge, pixels\n\nSCALE = 'sqrt'  # colour scale\nWAVELENGTH = 1.3  # Å\n"


def test_parse_parameters_reads_names_and_defaults():
    assert parse_parameters(GOOD) == {"N_PIXELS": 512, "SCALE": "sqrt", "WAVELENGTH": 1.3}


@pytest.mark.parametrize("source, rule", [
    ("N = 1\n", "comment"),
    ("n = 1  # count\n", "UPPER_CASE"),
    ("N = 2 * 3  # count\n", "literal"),
    ("N = M = 1  # count\n", "only"),
    ("N = 1; M = 2  # counts\n", "one assignment per line"),
    ("N = (1,\n     2)  # pair\n", "one assignment per line"),
    ("import math  # for pi\n", "only"),
    ("N: int = 1.5  # count\n", "annotated type"),
    ("N = 1  # count\nN = 2  # again\n", "twice"),
    ("N = 1  # count\n# a stray comment line\n", "only"),
])
def test_parse_parameters_names_the_broken_rule(source, rule):
    with pytest.raises(ValueError, match=rule):
        parse_parameters(source)


def notebook_with(*cells):
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    return nb


@pytest.mark.parametrize("n_cells", [0, 2])
def test_a_notebook_needs_exactly_one_parameters_cell(tmp_path, n_cells):
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook_with(*[("N = 1  # count", ["parameters"])] * n_cells), path)
    with pytest.raises(ValueError, match=f"{n_cells} cells tagged"):
        chapter_parameters(path)


def test_injection_refuses_unknown_names_and_wrong_types():
    defaults = {"N_PIXELS": 512, "SIGMA": 0.5, "NOISE": True}
    check_injection(defaults, {"N_PIXELS": 64, "SIGMA": 1})
    with pytest.raises(ValueError, match="N_PIXEL"):
        check_injection(defaults, {"N_PIXEL": 64})
    with pytest.raises(TypeError, match="N_PIXELS"):
        check_injection(defaults, {"N_PIXELS": 64.0})
    with pytest.raises(TypeError, match="NOISE"):
        check_injection(defaults, {"NOISE": 0})

"""Run book chapters under papermill and read back the values they record with myst-nb's ``glue``.

Imported by the tests in this folder (pytest puts it on ``sys.path``).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
BOOK = REPO / "book"

#: Where myst-nb's ``glue(name, value, display=False)`` puts the value: a display_data output whose
#: metadata is ``{"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}}`` and whose data keys are the
#: value's MIME bundle, each prefixed with GLUE_PREFIX (so Jupyter does not display it).
GLUE_PREFIX = "application/papermill.record/"

UPPER_CASE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
ANNOTATION_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "tuple": tuple, "list": list}


def chapter_path(name: str) -> Path:
    """``book/<name>.ipynb``."""
    return BOOK / f"{name}.ipynb"


def parameters_cells(nb) -> list:
    """The notebook's cells tagged ``parameters``."""
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def parse_parameters(source: str) -> dict:
    """Names and default values of a ``parameters`` cell, checking the house rules.

    Every non-blank line must be one assignment (optionally annotated: ``N: int = 3``) of a literal to an
    UPPER_CASE name, followed by a comment.

    Raises
    ------
    ValueError
        Naming the first line that breaks a rule.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"parameters cell does not parse: {err}") from None
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    by_line = {}
    for stmt in tree.body:
        text = lines[stmt.lineno - 1].strip()
        if stmt.lineno != stmt.end_lineno or stmt.lineno in by_line:
            raise ValueError(f"line {stmt.lineno} {text!r}: one assignment per line, on one line")
        by_line[stmt.lineno] = stmt
    values = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        stmt = by_line.get(number)
        where = f"line {number} {line.strip()!r}"
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, annotation = stmt.targets[0], None
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, annotation = stmt.target, stmt.annotation
        else:
            raise ValueError(f"{where}: only `NAME = literal  # comment` lines are allowed")
        if not (isinstance(target, ast.Name) and UPPER_CASE.match(target.id)):
            raise ValueError(f"{where}: the name must be UPPER_CASE")
        try:
            value = ast.literal_eval(stmt.value)
        except ValueError:
            raise ValueError(f"{where}: the value must be a literal") from None
        if annotation is not None:
            expected = ANNOTATION_TYPES.get(ast.unparse(annotation))
            if expected is not None and not _is_instance(value, expected):
                raise ValueError(f"{where}: the value does not have the annotated type")
        if number not in commented:
            raise ValueError(f"{where}: needs a comment saying what it is (and its unit)")
        if target.id in values:
            raise ValueError(f"{where}: {target.id} is assigned twice")
        values[target.id] = value
    return values


def chapter_parameters(path: Path) -> dict:
    """Defaults of the one ``parameters`` cell of the notebook at ``path``."""
    nb = nbformat.read(path, as_version=4)
    cells = parameters_cells(nb)
    if len(cells) != 1:
        raise ValueError(f"{path.name}: {len(cells)} cells tagged 'parameters', need exactly one")
    return parse_parameters(cells[0].source)


def check_injection(defaults: dict, params: dict) -> None:
    """Refuse names the parameters cell does not define and values of another type than the default.

    Papermill itself accepts any name, so a misspelt parameter would silently leave the default in place.
    """
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"not in the parameters cell: {unknown}; it defines {sorted(defaults)}")
    for name, value in params.items():
        default = defaults[name]
        expected = (int, float) if type(default) is float else type(default)
        if not _is_instance(value, expected):
            raise TypeError(f"{name}={value!r}: the default {default!r} is a {type(default).__name__}")


def run_notebook(path: Path, tmp_path: Path, **params) -> dict:
    """Execute the notebook at ``path`` with papermill in ``tmp_path`` and return its glued values.

    The kernel is ``python3`` and its working directory ``tmp_path``, so whatever the notebook writes
    lands there; the executed notebook is saved there too, under the same name.
    """
    import papermill

    path = Path(path)
    check_injection(chapter_parameters(path), params)
    out = Path(tmp_path) / path.name
    papermill.execute_notebook(path, out, parameters=params, kernel_name="python3", language="python",
                               cwd=str(tmp_path), progress_bar=False, log_output=False)
    return read_glue(nbformat.read(out, as_version=4))


def run_chapter(name: str, tmp_path: Path, **params) -> dict:
    """Execute ``book/<name>.ipynb`` at the given parameters (see :func:`run_notebook`)."""
    return run_notebook(chapter_path(name), tmp_path, **params)


def read_glue(nb) -> dict:
    """Values recorded with ``myst_nb.glue`` in an executed notebook, by name.

    Values come back from their ``text/plain`` form: Python literals, NumPy scalars (``np.float64(0.5)``)
    and ``nan``/``inf`` become Python objects; anything else stays a string.
    """
    values = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if output.get("output_type") != "display_data" or not meta:
                continue
            name = meta["name"]
            if name in values:
                raise ValueError(f"glue name {name!r} recorded twice")
            text = output["data"].get(meta.get("mime_prefix", "") + "text/plain")
            values[name] = _from_repr(text)
    return values


def _from_repr(text: str | None):
    if text is None:
        return None
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return text


def _literal(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("nan", "inf"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(x) for x in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords
            and ast.unparse(node.func).split(".")[0] in ("np", "numpy")):
        return _literal(node.args[0])  # NumPy 2 scalar repr, e.g. np.float64(0.5)
    raise ValueError(ast.unparse(node))


def _is_instance(value, expected) -> bool:
    if isinstance(value, bool) and expected in (int, (int, float)):
        return False
    return isinstance(value, expected)


def small_parameters(name: str, data_dir: Path, full_results: Path | None = None) -> dict:
    """The small parameters CI runs chapter ``name`` at (the same code path as the published defaults).

    ``data_dir`` receives the data sets the chapters build; chapters 3–5 reuse chapter 2's set when it is
    there. ``full_results`` is where chapters 2, 4 and 5 look for committed full-scale runs (None: none).
    """
    data = {"DATA_DIR": str(data_dir)}
    none = str(Path(data_dir) / "no-full-run")
    table = {
        "01_simulator_physics": dict(N_PIXELS=128, MOSAIC_DOMAINS=50),
        "02_dataset": dict(N_IMAGES=60, PIXELS=128, N_ICE_IMAGES=30, **data,
                           FULL_BUILD=str(full_results / "dataset" / "full_build.json") if full_results else none),
        "03_feature_extractors": dict(N_IMAGES=60, PIXELS=128, **data),
        "04_classic_tuning": dict(N_IMAGES=60, PIXELS=128, N_TRIALS=6, N_SPOT_TRIALS=4, **data,
                                  FULL_RESULTS=str(full_results / "classic") if full_results else none,
                                  SPOT_RESULTS=str(full_results / "classic-spots") if full_results else none,
                                  WINDOW_RESULTS=str(full_results / "classic-spots-windows") if full_results else none,
                                  STACK_RESULTS=str(full_results / "stacked-classic") if full_results else none),
        "05_deepfreak": dict(N_IMAGES=60, PIXELS=128, BINNING=2, MAX_BUDGET=3.0, EPOCHS=2, THREADS=1, **data,
                             FULL_RESULTS=str(full_results / "deepfreak") if full_results else none,
                             OTHER_RESULTS=",".join(str(full_results / d) for d in ("deepfreak-hand", "deepfreak-bin2"))
                             if full_results else none,
                             SPOT_NET_RESULTS=str(full_results / "deepfreak-bin2-spots") if full_results else none,
                             SPEED_RESULTS=str(full_results / "speed") if full_results else none),
    }
    return table[name]

"""Neuron views in a real notebook: a Jupyter kernel runs one (nbclient), its file stays small
(the first view carries circuitsvis's bundle, the later ones reference it), and its HTML export
(nbconvert) renders every view in a headless Chromium, silent and offline, also with the first
view moved last (the later views wait for the bundle). Without a kernel that starts, it skips.
"""

from pathlib import Path

import pytest
from test_browser import check_quiet_and_offline, open_page, save_screenshot

from tl_neuronkinds.present import render

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")

pytestmark = pytest.mark.slow  # a kernel records a profile, then a browser opens the export

N_VIEWS = 10
#: Each view after the first: its fragment and the stylesheet, no bundle.
LATER_VIEW_BYTES = 100_000
SETUP = """
import warnings
import tl_neuronkinds as nk
warnings.simplefilter("ignore", nk.EvidenceWarning)
model = nk.load_opt(nk.embedded_model_dir(), device="cpu")
corpus = nk.Corpus.embedded(split="heldout")
tokens = corpus.tokenize(model.tokenizer, seq_len=model.cfg.n_ctx, n_tokens=1024)
profile = nk.record(model, tokens, layers=[0, 1])  # its progress: a bar in the notebook
analysis = nk.Analysis(profile)
table = nk.classify(analysis)
alive = table[~table.dead.fillna(True)].sort_values("count", ascending=False)
picks = list(zip(alive.layer.astype(int), alive.neuron.astype(int)))[:N_VIEWS]
assert len(picks) == N_VIEWS, picks
""".replace("N_VIEWS", str(N_VIEWS))


def view_html(cell) -> str:
    """The HTML output of a view's cell (exactly one)."""
    (html,) = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    return html


def run_notebook(tmp_path: Path):
    """The notebook of ``SETUP`` and ``N_VIEWS`` views, executed by a python3 kernel."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP)] + [
        nbformat.v4.new_code_cell(
            f"nk.show_neuron(model, profile, *picks[{i}], tokens=tokens, analysis=analysis)"
        )
        for i in range(N_VIEWS)
    ]
    started: list[int] = []
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
        on_cell_start=lambda **kw: started.append(kw["cell_index"]),
    )  # fmt: skip
    try:
        client.execute()
    except Exception as err:
        if started:  # the kernel ran: a cell failed
            raise
        pytest.skip(f"no Jupyter kernel 'python3' could start ({type(err).__name__}: {err}); "
                    "install ipykernel")  # fmt: skip
    return nb


def export(nb, path: Path) -> Path:
    """``nb`` as HTML by nbconvert's ``basic`` template (the cells, no require.js or MathJax
    from a CDN) in a minimal document."""
    body, _ = nbconvert.HTMLExporter(template_name="basic").from_notebook_node(nb)
    path.write_text(
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>notebook</title>"
        f"</head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


#: Per view on the page: its context widgets, and how many rendered tokens.
VIEWS = """[...document.querySelectorAll('.nk-view')].map(v => ({
    widgets: v.querySelectorAll('.nk-widget').length,
    rendered: [...v.querySelectorAll('.nk-widget')].filter(
        w => w.querySelectorAll('.colored-tokens > span > span').length > 0).length}))"""


def check_rendered(nb, path: Path, tmp_path: Path, name: str) -> None:
    n_widgets = sum(view_html(c).count('class="nk-widget"') for c in nb.cells[1:])
    state = open_page(path, tmp_path, n_widgets, VIEWS)
    check_quiet_and_offline(state)
    views = state["extra"]
    assert len(views) == N_VIEWS and all(v["widgets"] > 0 for v in views), views
    assert all(v["rendered"] == v["widgets"] for v in views), views
    assert len(state["widgets"]) == n_widgets and all(w["rendered"] for w in state["widgets"])
    save_screenshot(state["png"], tmp_path, name)


def test_notebook_carries_the_bundle_once_and_renders_offline(tmp_path: Path) -> None:
    nb = run_notebook(tmp_path)
    path = tmp_path / "views.ipynb"
    nbformat.write(nb, path)
    bundle = len(render.bundle_script())
    streams = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "record pass 2/2 (record): 100%" in streams  # a text bar: no ipywidgets here
    outputs = [view_html(cell) for cell in nb.cells[1:]]
    assert [o.count("data-nk-bundle") for o in outputs] == [1] + [0] * (N_VIEWS - 1)
    assert all(len(o) < LATER_VIEW_BYTES for o in outputs[1:]), [len(o) for o in outputs]
    assert len(outputs[0]) < bundle + LATER_VIEW_BYTES
    text = path.read_text(encoding="utf-8")
    assert text.count("data-nk-bundle") == 1
    assert path.stat().st_size < bundle + N_VIEWS * LATER_VIEW_BYTES

    check_rendered(nb, export(nb, tmp_path / "views.html"), tmp_path, "notebook.png")
    # The view with the bundle last: every other view's widgets wait for it.
    nb.cells = [nb.cells[0], *nb.cells[2:], nb.cells[1]]
    check_rendered(nb, export(nb, tmp_path / "reordered.html"), tmp_path, "reordered.png")


def test_rerunning_the_cell_with_the_bundle_sends_it_again() -> None:
    """Cells run as JupyterLab runs them (each request names its cell, ``cellId``): the re-run
    of the cell whose output held the bundle carries it again, no other view does."""
    from jupyter_client.manager import start_new_kernel

    try:
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    except Exception as err:
        pytest.skip(f"no Jupyter kernel 'python3' could start ({type(err).__name__}: {err}); "
                    "install ipykernel")  # fmt: skip

    def run(cell: str, code: str) -> list[str]:
        """The HTML outputs of ``code`` run as cell ``cell``."""
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}  # fmt: skip
        request = kc.session.msg("execute_request", content, metadata={"cellId": cell})
        kc.shell_channel.send(request)
        html = []
        while True:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            if msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] in ("execute_result", "display_data"):
                html.append(msg["content"]["data"].get("text/html", ""))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return html

    try:
        run(
            "setup",
            "from tl_neuronkinds.present import render\nclass View:\n"
            "    def _repr_html_(self): return render.notebook_html('<p>view</p>')",
        )
        bundled = {
            (cell, i): [o.count("data-nk-bundle") for o in run(cell, "display(View())\nView()")]
            for i, cell in enumerate(["a", "b", "a", "b", "c"])
        }  # fmt: skip
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert bundled == {
        ("a", 0): [1, 0], ("b", 1): [0, 0], ("a", 2): [1, 0], ("b", 3): [0, 0], ("c", 4): [0, 0]
    }  # fmt: skip

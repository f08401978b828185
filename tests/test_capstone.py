"""The capstone (labs/capstone.py): the learner's pieces, read from saved notebooks, run as a model.

Proven on a student edition (every solution stubbed by the labs tooling) in which the learner solved every piece
but one, which is left unsolved, and wrote one piece wrong: the report names the wrong piece as the first that
differs, says the unsolved one runs as the library's, and the model still writes text. On the shipped edition
the assembled model matches transformers' MistralForCausalLM.
"""

from __future__ import annotations

import nbformat
import pytest
import torch

from minimistral.labs import capstone
from minimistral.labs.edition import student_notebook
from minimistral.labs.exercises import NOTEBOOKS_DIR, find_exercises

WRONG_RMS_NORM = """def my_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)  # forgot the weight
    ### END SOLUTION
"""


def _student_edition(tmp_path, unsolved: str, wrong: dict[str, str]):
    """Notebooks 02-09 as a learner would save them: the student edition with every exercise solved (the shipped
    solution) except `unsolved` (left as the stub) and the functions in `wrong` (name -> their cell source)."""
    for path in sorted(NOTEBOOKS_DIR.glob("0[2-9]_*.ipynb")):
        shipped = nbformat.read(path, as_version=4)
        nb = student_notebook(shipped, str(path))
        for ex in find_exercises(shipped):
            for i in ex.solution_cells:
                src = shipped.cells[i].source
                if f"def {unsolved}(" in src:
                    continue  # stays stubbed
                name = next((n for n in wrong if f"def {n}(" in src), None)
                nb.cells[i].source = wrong[name] if name else src
        nbformat.write(nb, tmp_path / path.name)
    return tmp_path


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    folder = _student_edition(tmp_path_factory.mktemp("learner"), unsolved="my_repeat_kv",
                              wrong={"my_rms_norm": WRONG_RMS_NORM})
    return capstone.your_mistral(folder)


def test_student_edition_stubs_everything(tmp_path):
    folder = _student_edition(tmp_path, unsolved="", wrong={})
    assert all(f.source == "yours" for f in capstone.collect(folder).values())
    path = next(NOTEBOOKS_DIR.glob("02_*.ipynb"))
    stubbed = tmp_path / "stubbed"
    stubbed.mkdir()
    nbformat.write(student_notebook(nbformat.read(path, as_version=4), str(path)), stubbed / path.name)
    assert capstone.collect(stubbed)["rms_norm"].source == "unsolved"


def test_wrong_piece_is_named_first(learner):
    first = learner.first_difference
    assert first is not None and first.piece.key == "rms_norm", learner.report()
    report = learner.report()
    assert "The first piece that differs from the library's: RMSNorm (exercise 02.1, my_rms_norm" in report
    assert first.diff > 0.01  # the trained model's norm gains are far from 1
    assert learner.logits_gap > 0.01  # and the model runs with the learner's piece, wrong as it is


def test_unsolved_piece_falls_back_and_says_so(learner):
    f = learner.found["repeat_kv"]
    assert f.source == "unsolved" and f.used == "library"
    assert learner.model.pieces["repeat_kv"] is capstone._library()["repeat_kv"]
    report = learner.report()
    line = next(r for r in report.splitlines() if r.startswith("GQA"))
    assert "LIBRARY'S" in line and "unsolved" in line and "the library's piece runs in its place" in line
    assert "The library stands in for 04.1" in report


def test_the_learners_model_still_writes(learner):
    text = learner.generate("In the beginning", 12)
    assert isinstance(text, str) and len(text.split()) >= 3


def test_shipped_edition_matches_transformers():
    from oracle import hf_model_from_ours
    cap = capstone.your_mistral(NOTEBOOKS_DIR)
    solved = [f for f in cap.found.values() if f.source == "yours"]
    assert len(solved) == len(capstone.PIECES) and cap.first_difference is None, cap.report()
    hf = hf_model_from_ours(cap.library_model)
    V, W = cap.library_model.args.vocab_size, cap.library_model.args.sliding_window
    tokens = torch.randint(3, V, (1, W + 72), generator=torch.Generator().manual_seed(0))  # past the window
    with torch.no_grad():
        ours = cap.model(tokens)
        ref = hf(tokens).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # the cached path (the learner's rolling cache and chunk mask) gives the same logits, past the ring's wrap
    cache = cap.model.new_cache()
    chunked = torch.cat([cap.model(tokens[:, s:s + 50], cache=cache) for s in range(0, W + 72, 50)], dim=1)
    torch.testing.assert_close(chunked, ref, atol=1e-4, rtol=1e-4)
    assert cap.greedy["yours"] == cap.greedy["library"]


def test_find_checkpoint_says_why_there_is_none(tmp_path, monkeypatch):
    assert capstone.find_checkpoint("") == (None, "no 7B checkpoint here (MINIMISTRAL_CHECKPOINT is not set)")
    folder, why = capstone.find_checkpoint(str(tmp_path / "missing"))
    assert folder is None and "is set, but there is no such folder" in why and str(tmp_path / "missing") in why
    (tmp_path / "notebooks" / "models" / "m7b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks")  # a kernel runs in the notebook's folder
    assert capstone.find_checkpoint("models/m7b") == ((tmp_path / "notebooks" / "models" / "m7b").resolve(), "")
    folder, why = capstone.find_checkpoint("models/other")  # relative: the notebook's folder, then the repository's
    assert folder is None and str(tmp_path / "notebooks" / "models" / "other") in why
    assert str(capstone.Path(capstone.__file__).resolve().parents[2] / "models" / "other") in why

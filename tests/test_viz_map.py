"""The course map: the diagram carries the config's own shapes, and the strip lights the asked notebook."""

import matplotlib.pyplot as plt
import pytest

import minimistral as mm
from minimistral.viz.map import PIECES, STEPS, model_diagram, you_are_here


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_diagram_shows_the_configs_shapes():
    args = mm.ModelArgs(dim=64, n_layers=3, head_dim=16, hidden_dim=176, n_heads=4, n_kv_heads=2,
                        vocab_size=300, sliding_window=8)
    fig = model_diagram(args)
    text = "\n".join(_texts(fig))
    assert "3 x  transformer block" in text
    assert "64 -> 176" in text and "176 -> 64" in text          # SwiGLU's w1 and w2
    assert "2 query heads share each K/V head" in text         # GQA: 4 / 2
    assert "W = 8" in text and "no RoPE on v" in text
    assert sum(t == "RoPE" for t in _texts(fig)) == 2           # on q and k only
    assert fig.dpi >= 100
    assert min(t.get_fontsize() for ax in fig.axes for t in ax.texts) >= 9
    plt.close(fig)


def test_strip_lights_one_step_and_rejects_unknown_notebooks():
    fig = you_are_here(3)
    bold = [t.get_text() for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert bold == ["03 RoPE"]
    assert fig.dpi >= 100
    plt.close(fig)
    with pytest.raises(ValueError, match="notebook '15'"):
        you_are_here("15")
    assert set(PIECES) <= set(STEPS)


def test_strip_shows_the_whole_course():
    """Every notebook 00-14 is on the strip, in order, with the ones before the lit one ticked off."""
    fig = you_are_here("12")
    boxes = [t.get_text().split()[0] for t in fig.axes[0].texts if t.get_text()[:2].isdigit()]
    assert boxes == [f"{n:02d}" for n in range(15)]
    titles = [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("Part")]
    assert [t.split(" ·")[0] for t in titles] == ["Part I", "Part II", "Part III", "Part IV"]
    faces = [p.get_facecolor() for p in fig.axes[0].patches]
    assert faces[12] != faces[11] and faces[11] == faces[0] and faces[13] == faces[14] != faces[0]
    plt.close(fig)


def test_map_names_are_reachable_from_the_package():
    """notebook 00 points at mm.viz.model_diagram; the package docstring promises every public name."""
    assert mm.viz.model_diagram is model_diagram and mm.viz.you_are_here is you_are_here
    assert {"model_diagram", "you_are_here"} <= set(mm.viz.__all__)

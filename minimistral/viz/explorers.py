"""Explorers: ipywidgets boxes with sliders whose picture redraws when a slider moves (notebooks 03, 05, 08, 11).

`explorer(draw, name, **controls)` makes one over any drawing function of a notebook's own; `mask_explorer`,
`cache_explorer` and `attention_explorer` are the library's.

Their first picture is also part of the cell's output as a plain PNG, so a notebook saved after running
shows it where widgets cannot be drawn (GitHub, nbviewer, an untrusted notebook); in a live JupyterLab the
interactive widget is shown instead. Pictures are PNGs set on a `widgets.Output`, so they work in a plain
kernel without ipympl. Without ipywidgets (a notebook run as a plain script on a bare machine) an
explorer draws its first picture and returns it as a static object, which displays that PNG.
"""

from __future__ import annotations

import base64
import io
import traceback

import matplotlib.pyplot as plt
import torch

from .capture import GiB, capture_attention
from .cache_plots import plot_cache_slots, plot_window_mask
from .plots import _check_int, plot_attention, plot_head_grid, token_labels


def _png_b64(fig, dpi=80) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)  # the explorer shows the PNG; leaving the figure open would make the inline backend show it again
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _widgets():
    """The ipywidgets module, or None where it cannot be imported (then explorers are static pictures)."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


class _Fixed:
    """A control's stand-in without ipywidgets: it only holds its first value."""

    def __init__(self, value):
        self.value = value


class _ControlValues:
    """What both explorers (widget and static) read from `self.controls`: a name starting with "_" is a
    control that draws nothing (the play button)."""

    def values(self):
        return {k: c.value for k, c in self.controls.items() if not k.startswith("_")}

    def state(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values().items())


class StaticExplorer(_ControlValues):
    """An explorer's first picture, where ipywidgets is missing: no sliders, the same text and PNG."""

    def __init__(self, name, controls, draw, note=""):
        self.name, self.controls, self.note = name, controls, note
        self.png = _png_b64(draw(**self.values()))  # a drawing error is raised, not hidden in an output area

    def __repr__(self) -> str:
        return f"{self.name} ({self.state()}){self.note} [static: ipywidgets is not installed]"

    def _repr_mimebundle_(self, **kwargs):
        return {"text/plain": repr(self), "image/png": self.png}


def _explorer_class():
    widgets = _widgets()
    if widgets is None:
        return StaticExplorer

    class Explorer(_ControlValues, widgets.VBox):
        """Controls above a picture. `draw(**values)` makes the Figure for the controls' values."""

        def __init__(self, name, controls, draw, note=""):
            self.name, self._draw, self.note = name, draw, note
            self.controls = controls
            self.output = widgets.Output(layout=widgets.Layout(min_height="200px"))
            self.png = None
            super().__init__([widgets.HBox(list(controls.values())), self.output])
            for c in controls.values():
                if hasattr(c, "value") and not isinstance(c, widgets.Play):
                    c.observe(lambda change: self.redraw(), names="value")
            self.redraw()

        def redraw(self):
            try:
                self.png = _png_b64(self._draw(**self.values()))
                out = {"output_type": "display_data", "metadata": {},
                       "data": {"image/png": self.png, "text/plain": f"<{self.name}: {self.state()}>"}}
            except Exception:  # show the error where the learner looks, not in the server log
                out = {"output_type": "stream", "name": "stderr", "text": traceback.format_exc()}
            self.output.outputs = (out,)

        def _repr_mimebundle_(self, **kwargs):
            # Live JupyterLab renders the widget; where widgets cannot be drawn (a saved notebook on GitHub,
            # an untrusted notebook) the first picture still shows, and nbval compares the plain text
            data = super()._repr_mimebundle_(**kwargs)
            data["text/plain"] = f"{self.name} ({self.state()}){self.note}"
            if self.png is not None:
                data["image/png"] = self.png
            return data

    return Explorer


def _slider(description, value, lo, hi, width="320px"):
    widgets = _widgets()
    if widgets is None:
        return _Fixed(value)
    return widgets.IntSlider(value=value, min=lo, max=hi, step=1, description=description, continuous_update=False,
                             style={"description_width": "initial"}, layout=widgets.Layout(width=width))


def attention_explorer(model, tokens, tokenizer=None, max_bytes=GiB):
    """Sliders for layer and head over the attention maps of one prompt (captured once, every layer and head).
    tokens: ids (list, 1-D or (1, T) tensor) or a string when a tokenizer is given."""
    widgets = _widgets()
    if isinstance(tokens, str):
        if tokenizer is None:
            raise ValueError("tokens is a string: pass tokenizer= to encode it, or give token ids")
        tokens = tokenizer.encode(tokens, bos=True)
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten()
    device = next(model.parameters()).device
    with torch.no_grad(), capture_attention(model, max_bytes=max_bytes) as cap:
        model(ids[None].to(device))
    labels = token_labels(ids, tokenizer)
    args = model.args
    n_rep = args.n_rep

    def draw(layer, head, view):
        if view == "all heads":
            return plot_head_grid(cap, layer, tokens=labels)
        probs, q_pos, k_pos = cap.attention(layer, head)
        group = head // n_rep
        return plot_attention(probs, tokens=labels, q_positions=q_pos, k_positions=k_pos,
                              title=f"layer {layer}, head {head} (shares KV head {group} with heads "
                                    f"{group * n_rep}-{group * n_rep + n_rep - 1})")

    controls = {
        "layer": _slider("layer", 0, 0, args.n_layers - 1, "260px"),
        "head": _slider("head", 0, 0, args.n_heads - 1, "260px"),
        "view": (widgets.ToggleButtons(options=["one head", "all heads"], value="one head",
                                       style={"button_width": "100px"}) if widgets else _Fixed("one head")),
    }
    return _explorer_class()("attention explorer", controls, draw, f": {len(ids)} tokens; move the sliders in JupyterLab")


def cache_explorer(window: int = 8, n_tokens: int = 24, start: int | None = None):
    """Step through a sequence token by token and watch the rolling cache's W slots fill, then wrap. `start`: the
    tokens written when the slider starts (what a static render shows); by default half a window plus one (capped at n_tokens)."""
    widgets = _widgets()
    from ..cache import RollingKVCache
    _check_int("window", window)
    _check_int("n_tokens", n_tokens)
    if start is not None:
        _check_int("start", start)
        if not 1 <= start <= n_tokens:
            raise ValueError(f"cache_explorer: start={start} must be between 1 and n_tokens={n_tokens}")

    def draw(tokens):  # replay the library's own bookkeeping up to this step
        cache = RollingKVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=2, size=window)
        for p in range(tokens):
            cache.advance(torch.tensor([p]))
        return plot_cache_slots(cache)

    step = _slider("tokens written", min(window // 2 + 1, n_tokens) if start is None else start, 1, n_tokens, "420px")
    if widgets is None:
        play = _Fixed(step.value)
    else:
        play = widgets.Play(value=step.value, min=1, max=n_tokens, step=1, interval=700, description="play")
        widgets.jslink((play, "value"), (step, "value"))
    return _explorer_class()("cache explorer", {"_play": play, "tokens": step}, draw,
                             f": W={window}, {n_tokens} tokens; press play or move the slider in JupyterLab")


def _control(name, spec):
    """A slider from (value, lo, hi) or (value, lo, hi, step): integers give an IntSlider, any float a
    FloatSlider; a list or tuple of strings gives buttons (first one chosen); an ipywidgets control stays."""
    widgets = _widgets()
    if hasattr(spec, "value"):  # an ipywidgets control, or one of our stand-ins
        return spec
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(v, str) for v in spec):
        return (widgets.ToggleButtons(options=list(spec), value=spec[0], description=name)
                if widgets else _Fixed(spec[0]))
    if not (isinstance(spec, tuple) and len(spec) in (3, 4) and all(isinstance(v, (int, float)) for v in spec)):
        raise TypeError(f"explorer control {name}={spec!r}: give (value, lo, hi), (value, lo, hi, step), a list of "
                        "option strings, or an ipywidgets control")
    value, lo, hi, *step = spec
    if not lo <= value <= hi:
        raise ValueError(f"explorer control {name}: value {value} is outside [{lo}, {hi}]")
    if widgets is None:
        return _Fixed(value)
    if all(isinstance(v, int) for v in spec):
        return widgets.IntSlider(value=value, min=lo, max=hi, step=step[0] if step else 1, description=name,
                                 continuous_update=False, style={"description_width": "initial"})
    return widgets.FloatSlider(value=value, min=lo, max=hi, step=step[0] if step else (hi - lo) / 100,
                               description=name, continuous_update=False, style={"description_width": "initial"})


def _figure_of(draw):
    """Wrap a drawing function so that it returns its Figure. One written for a notebook may instead draw on
    pyplot's figure and call plt.show(): while it runs, show() does nothing, and the figure it made is taken
    (so the explorer, not the inline backend, shows it, once)."""
    def figure(**values):
        before = set(plt.get_fignums())
        show, plt.show = plt.show, (lambda *a, **k: None)
        try:
            fig = draw(**values)
        finally:
            plt.show = show
        made = [plt.figure(n) for n in plt.get_fignums() if n not in before]
        if fig is None:
            if not made:
                raise ValueError(f"{getattr(draw, '__name__', 'draw')} returned no Figure and drew none")
            fig = made[-1]
        for other in made:
            if other is not fig:
                plt.close(other)
        return fig
    return figure


def explorer(draw, name: str = "explorer", note: str = "; move the sliders in JupyterLab", **controls):
    """Sliders over any drawing function: `draw(**values)` is called with one keyword per control and returns a
    matplotlib Figure (or draws one and calls plt.show()). Like the library's explorers, its first picture is
    also a plain PNG in the cell's output, so a saved notebook and the course website show it.

        explorer(draw_clock, "RoPE clock", position=(100, 0, 4096), log10_theta=(4.0, 2.0, 6.0, 0.5))
    """
    if not callable(draw):
        raise TypeError(f"explorer: draw must be a function returning a Figure, not {type(draw).__name__}")
    if not controls:
        raise ValueError("explorer: give at least one control, e.g. position=(100, 0, 4096)")
    built = {k: _control(k, v) for k, v in controls.items()}
    return _explorer_class()(name, built, _figure_of(draw), note)


def mask_explorer(max_len: int = 32):
    """Sliders for sequence length and window over the sliding-window mask."""
    _check_int("max_len", max_len, low=2)

    def draw(seq_len, window):
        return plot_window_mask(seq_len, window)

    controls = {"seq_len": _slider("sequence length", min(16, max_len), 1, max_len),
                "window": _slider("window W", min(4, max_len), 1, max_len)}
    return _explorer_class()("mask explorer", controls, draw, "; move the sliders in JupyterLab")

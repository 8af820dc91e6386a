"""ipywidgets views: controls bound to a state object from ``widgets.state``, and nothing else.

Each view is a ``VBox``; display it as a cell's last expression. A control's change calls the
state's ``select``; the view then re-draws from the state. A rejected value (a feature out of
range, a word outside the vocabulary) is shown in the view's status line and changes nothing.
"""

from __future__ import annotations

import html

import altair as alt
import ipywidgets as W

from gremlinkit.errors import GremlinkitError
from widgets.state import FeatureExplorerState, ScanViewerState, SteeringState


def _show(out: W.Output, *items) -> None:
    """Replace ``out``'s contents; charts are drawn as SVG in the kernel, so they show offline.

    The outputs are set, not captured from a ``with out:`` block, so a view also draws when no
    frontend is listening (in tests, or under papermill).
    """
    out.outputs = ()
    with alt.renderers.enable("svg"):
        for item in items:
            out.append_display_data(item)


class _View(W.VBox):
    """A status line that reports rejected input, shared by the three views."""

    _syncing = False  # True while a view sets its own controls: their change events are not user input

    def __init__(self, controls: list[W.Widget], outputs: list[W.Widget], css: str):
        self.status = W.HTML().add_class("gk-status")
        super().__init__([W.HBox(controls), self.status, *outputs])
        self.add_class(css)

    def _apply(self, change: dict, update) -> None:
        if self._syncing:
            return
        try:
            update(change["new"])
        except GremlinkitError as err:
            self.status.value = f"<span style='color:#b00020'>{html.escape(str(err))}</span>"
            return
        self.status.value = ""
        self.refresh()

    def refresh(self) -> None:  # pragma: no cover - every view overrides it
        raise NotImplementedError


class FeatureExplorer(_View):
    """Pick a model, an SAE and a feature; see top contexts, the activation histogram, logit effects."""

    def __init__(self, state: FeatureExplorerState):
        self.state = state
        self.model = W.Dropdown(options=state.models, value=state.model, description="model")
        self.sae = W.Dropdown(options=state.saes, value=state.sae, description="SAE")
        self.feature = W.Dropdown(description="feature")
        self._set_feature_options()
        self.plots = W.Output().add_class("gk-feature-charts")
        super().__init__([self.model, self.sae, self.feature], [self.plots], "gk-feature-explorer")
        self.model.observe(lambda c: self._apply(c, lambda v: self._reselect(model=v)), "value")
        self.sae.observe(lambda c: self._apply(c, lambda v: self._reselect(sae=v)), "value")
        self.feature.observe(lambda c: self._apply(c, lambda v: state.select(feature=v)), "value")
        self.refresh()

    def _set_feature_options(self) -> None:
        """List the features live on the current model; keep the pick if it is live, else the most frequent."""
        freq = self.state.index.frequencies()
        if self.state.feature not in set(freq.feature):
            self.state.select(feature=int(freq.feature.iloc[0]))
        self._syncing = True
        try:
            self.feature.options = [(f"{f} ({p:.0%} of tokens)", int(f)) for f, p in zip(freq.feature, freq.frequency)]
            self.feature.value = self.state.feature
        finally:
            self._syncing = False

    def _reselect(self, **pick) -> None:
        self.state.select(**pick)
        self._set_feature_options()

    def refresh(self) -> None:
        charts = self.state.charts()
        _show(self.plots, charts["contexts"], alt.hconcat(charts["histogram"], charts["effects"]))


class SteeringPlayground(_View):
    """Pick a trait and move the coefficient; the steered samples update beside their paired baseline."""

    def __init__(self, state: SteeringState):
        self.state = state
        self.trait = W.Dropdown(options=state.traits, value=state.trait, description="trait")
        self.coefficient = W.FloatSlider(value=state.coefficient, min=-state.limit, max=state.limit, step=0.5,
                                         description="coefficient", continuous_update=False)
        self.prompt = W.Text(value=state.prompt, description="prompt", continuous_update=False,
                             layout=W.Layout(width="480px"))
        self.baseline = W.HTML().add_class("gk-baseline")
        self.steered = W.HTML().add_class("gk-steered")
        self.plot = W.Output().add_class("gk-steering-chart")
        columns = W.HBox([self.baseline, self.steered], layout=W.Layout(width="100%"))
        super().__init__([self.trait, self.coefficient, self.prompt], [columns, self.plot], "gk-steering")
        self.trait.observe(lambda c: self._apply(c, lambda v: state.select(trait=v)), "value")
        self.coefficient.observe(lambda c: self._apply(c, lambda v: state.select(coefficient=v)), "value")
        self.prompt.observe(lambda c: self._apply(c, lambda v: state.select(prompt=v)), "value")
        self.refresh()

    @staticmethod
    def _column(title: str, texts: list[str]) -> str:
        items = "".join(f"<li>{html.escape(t)}</li>" for t in texts)
        return f"<div style='width:46ch;padding-right:2ch'><b>{html.escape(title)}</b><ol>{items}</ol></div>"

    def refresh(self) -> None:
        s = self.state
        low, high = s.poles
        self.baseline.value = self._column("baseline", s.texts("baseline"))
        self.steered.value = self._column(f"steered: {s.coefficient:+g} x ({low} -> {high})", s.texts("steered"))
        _show(self.plot, s.chart())


class ScanViewer(_View):
    """Pick a scanned feature; see its decay curves across models and modes, and its half-lives."""

    def __init__(self, state: ScanViewerState):
        self.state = state
        self.feature = W.Dropdown(options=state.features, value=state.feature, description="feature")
        self.plot = W.Output().add_class("gk-scan-chart")
        self.table = W.HTML().add_class("gk-scan-table")
        super().__init__([self.feature], [self.plot, self.table], "gk-scan-viewer")
        self.feature.observe(lambda c: self._apply(c, state.select), "value")
        self.refresh()

    def refresh(self) -> None:
        _show(self.plot, self.state.chart())
        self.table.value = self.state.half_lives().to_html(index=False, float_format=lambda x: f"{x:.2f}")

"""napari widgets: colour a structure by an SAE feature, list the features at selected residues, plot a
feature along the sequence, and show a feature's description and cluster neighbours.

Everything goes through :mod:`interplm_plugins.core`: the model, SAE and database are the session's
(:func:`~interplm_plugins.session.current_pipeline`, shared with PyMOL; activations cached on disk,
where the command line finds them too), the chains come from the reader's layer metadata, and a point's residue is the
row ``seq_index`` of :func:`~interplm_plugins.core.interpret.chains.chain_activations`. Running the model
happens on a napari thread worker with a progress bar in the activity dock; the methods that start
one return it, and a widget's :attr:`busy` turns false once the result is shown.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, SpinBox, Table

from interplm_plugins.core.database.schema import NO_CONCEPT_MATCH, concept_label
from interplm_plugins.core.inputs.references import check_matches, match_chain, read_references
from interplm_plugins.core.inputs.structure import STANDARD_AMINO_ACIDS, StructureChain
from interplm_plugins.core.interpret.chains import ChainActivations, chain_activations, matched_activations
from interplm_plugins.core.interpret.colorscale import DEFAULT_SCALE, SCALES, scale_legend, unit_values
from interplm_plugins.core.interpret.mutate import SCAN_COLUMNS, largest_drops, scan_chain, select_labels
from interplm_plugins.errors import InterPLMError
from interplm_plugins.napari_plugin._reader import METADATA_KEY
from interplm_plugins.session import current_pipeline

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

#: Colour of points whose residue has no activation (another chain, or not aligned to the reference).
NEUTRAL_GREY = np.array([0.6, 0.6, 0.6, 1.0])
#: Colormaps offered for activations, low to high: white to red first (the default, as in PyMOL:
#: a sparse feature is off, white, on most residues), then napari's perceptually uniform ones.
COLORMAPS = ("white_red", "viridis", "magma", "inferno", "plasma", "turbo")
#: The colours of the ``white_red`` colormap (RGBA), which napari does not have under that name.
WHITE_RED = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
#: Chain-picker entry meaning every chain of the structure.
ALL_CHAINS = "all chains"
#: Columns of the widgets' feature tables.
HIT_COLUMNS = ["feature", "activation", "best concept", "test F1", "description"]


# ----------------------------------------------------------------------------------------------
# Layer <-> activations (no Qt; the widgets and tests use these)


def is_structure_layer(layer: Any) -> bool:
    """Whether ``layer`` is a Points layer made by this plugin's reader (it carries the chains)."""
    from napari.layers import Points

    return isinstance(layer, Points) and "chains" in layer.metadata.get(METADATA_KEY, {})


def layer_chains(layer: napari.layers.Points) -> dict[str, StructureChain]:
    """The structure chains of a reader layer, by chain id."""
    return layer.metadata[METADATA_KEY]["chains"]


def iter_chain_activations(
    chains: Sequence[StructureChain], reference: str | None = None, source: str | None = None
) -> Generator[None, None, dict[str, ChainActivations]]:
    """Worker body: embeds each chain with the session pipeline, yielding after each (progress);
    returns ``{chain id: ChainActivations}``. ``reference``: a sequence or a FASTA file with one
    record per protein; each chain takes the record it matches (none: no values), and it is an
    error, naming ``source``, only if no chain matches."""
    references = read_references(reference) if reference else None
    pipeline = current_pipeline()  # loads the model on first use: here, off the GUI thread
    result: dict[str, ChainActivations] = {}
    matches = []
    for chain in chains:
        if references:
            matches.append(match_chain(chain, references))
            result[chain.chain_id] = matched_activations(pipeline, chain, matches[-1])
        else:
            result[chain.chain_id] = chain_activations(pipeline, chain, source=source)
        yield
    if matches:
        check_matches(matches, source=source)
    return result


def colormap_of(name: str):
    """The napari colormap called ``name`` in :data:`COLORMAPS` (``white_red`` made here)."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    return Colormap(WHITE_RED, name="white_red") if name == "white_red" else ensure_colormap(name)


def point_values(layer: napari.layers.Points, activations: dict[str, ChainActivations], feature: int) -> np.ndarray:
    """Per point of ``layer``, ``feature``'s activation at its residue (NaN where the residue has none)."""
    chain_of_point = layer.features["chain"].to_numpy()
    seq_index = layer.features["seq_index"].to_numpy()
    values = np.full(len(chain_of_point), np.nan, dtype=np.float32)
    for chain_id, acts in activations.items():
        points = np.flatnonzero(chain_of_point == chain_id)
        values[points] = acts.feature_values(feature)[seq_index[points]]
    return values


def activation_colors(values: np.ndarray, colormap: str, vmin: float, vmax: float) -> np.ndarray:
    """RGBA ``[n, 4]``: ``values`` scaled from ``vmin`` to ``vmax`` through ``colormap``, NaN in neutral grey."""
    colors = np.tile(NEUTRAL_GREY, (len(values), 1))
    known = ~np.isnan(values)
    scaled = (values[known] - vmin) / max(vmax - vmin, np.finfo(np.float32).eps)
    colors[known] = colormap_of(colormap).map(np.clip(scaled, 0.0, 1.0))
    return colors


def selected_rows(
    layer: napari.layers.Points, activations: dict[str, ChainActivations], points: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """The chains' activation matrices stacked, and the rows in it of the selected points' residues.

    Stacking lets one ranking average over residues of several chains; residues that map to no
    sequence position (unaligned to the reference) are left out.
    """
    chain_of_point = layer.features["chain"].to_numpy()
    seq_index = layer.features["seq_index"].to_numpy()
    points = np.asarray(sorted(points), dtype=int)
    blocks, rows, offset = [], [], 0
    for chain_id, acts in activations.items():
        mine = points[chain_of_point[points] == chain_id]
        positions = acts.positions[seq_index[mine]]
        rows += [offset + int(p) for p in positions if p >= 0]
        blocks.append(acts.activations)
        offset += len(acts.activations)
    return np.concatenate(blocks), rows


def session_database() -> Any:
    """The session pipeline's :class:`~interplm_plugins.core.database.schema.FeatureDatabase`; raises without one."""
    database = current_pipeline().database
    if database is None:
        raise InterPLMError(
            "the session's pipeline has no feature database (choose one with interplm_plugins.session.use_pipeline(database=...))"
        )
    return database


def concept_text(database: Any, feature: int) -> str:
    """``"best concept: <name> (test F1 0.42)"`` for ``feature`` (chosen on validation), or why there is none."""
    if database is None:
        return "no feature database"
    best = database.concepts_for_feature(feature, k=1)
    return f"best concept: {concept_label(best[0])}" if best else NO_CONCEPT_MATCH


def hit_table(database: Any, features: Sequence[int], scores: Sequence[float | None]) -> pd.DataFrame:
    """One row per feature: its score, best concept with F1, and description (empty where none)."""
    best = database.best_concepts(list(features)) if features else {}
    rows = [
        [f, None if s is None else round(float(s), 3), best[f].concept if f in best else "",
         round(best[f].f1, 3) if f in best else None, database.description(f) or ""]
        for f, s in zip(features, scores)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=HIT_COLUMNS)


def _gradient_css(colormap: str, steps: int = 9) -> str:
    rgb = (colormap_of(colormap).map(np.linspace(0, 1, steps))[:, :3] * 255).round().astype(int)
    stops = ", ".join(f"stop:{i / (steps - 1):.3f} rgb({r}, {g}, {b})" for i, (r, g, b) in enumerate(rgb))
    return f"background: qlineargradient(x1:0, y1:0, x2:1, y2:0, {stops}); min-height: 14px; border-radius: 3px;"


# ----------------------------------------------------------------------------------------------
# Widgets


class FeaturePicker(Container):
    """A feature number, typed in or picked from a concept/description search of the session's database."""

    def __init__(self) -> None:
        self.number = SpinBox(label="feature", min=0, max=10_000_000)
        self.query = LineEdit(label="find concept", tooltip="e.g. 'Binding site', 'Helix', 'zinc'")
        self.search_button = PushButton(text="Search")
        self.matches = ComboBox(label="matches", choices=[], nullable=True)
        self.message = Label(value="")
        super().__init__(widgets=[self.number, self.query, self.search_button, self.matches, self.message])
        self.search_button.changed.connect(lambda: self.search())
        self.matches.changed.connect(self._pick)

    @property
    def value(self) -> int:
        return int(self.number.value)

    def search(self, text: str | None = None) -> list[int]:
        """Search the database for ``text`` (default: the query field); lists the hits, picks the best."""
        text = self.query.value if text is None else text
        self.query.value = text
        try:
            hits = session_database().search_features(text, k=20)
        except InterPLMError as exc:
            self.message.value = str(exc)
            return []
        self.matches.choices = [(f"{h.feature}: {h.matched} | {concept_label(h.best_concept)}", h.feature) for h in hits]
        self.message.value = f"{len(hits)} feature(s) match {text!r}" if hits else f"no feature matches {text!r}"
        if hits:
            self.matches.value = hits[0].feature
            self._pick(hits[0].feature)
        return [h.feature for h in hits]

    def _pick(self, feature: int | None) -> None:
        if feature is not None:
            self.number.value = feature


class _StructureWidget(Container):
    """Structure-layer and chain pickers, a status line, and the worker computing chain activations."""

    def __init__(self, napari_viewer: napari.Viewer, *, chain_picker: bool = True) -> None:
        self.viewer = napari_viewer
        self.layer_combo = ComboBox(label="structure", choices=self._layer_choices)
        self.chain_combo = ComboBox(label="chain", choices=self._chain_choices, visible=chain_picker)
        self.reference = LineEdit(
            label="reference",
            tooltip="Optional full-length sequence (e.g. UniProt), or a FASTA file with one record, to embed instead of the modelled residues; "
            "the chain is aligned to it. Empty: embed the chain's own sequence.",
        )
        self.status = Label(value="")
        self.busy = False
        super().__init__(widgets=[self.layer_combo, self.chain_combo, self.reference])
        self.layer_combo.changed.connect(self.chain_combo.reset_choices)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.reset_choices)

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if is_structure_layer(layer)]

    def _chain_choices(self, _widget: Any = None) -> list[str]:
        layer = self.layer_combo.value
        return [] if layer is None else [ALL_CHAINS, *layer_chains(layer)]

    def chosen_chains(self) -> list[StructureChain]:
        """The chains the chain picker names (all of the layer's for :data:`ALL_CHAINS`)."""
        chains = layer_chains(self.layer_combo.value)
        choice = self.chain_combo.value
        return list(chains.values()) if choice in (None, ALL_CHAINS) else [chains[choice]]

    def compute_activations(self, chains: Sequence[StructureChain], on_result: Callable[[dict[str, ChainActivations]], None]) -> GeneratorWorker:
        """Start a worker embedding ``chains``; ``on_result`` gets ``{chain id: ChainActivations}`` on the GUI thread."""
        return self.start_worker(iter_chain_activations, [list(chains)], len(chains), "SAE activations", on_result)

    def start_worker(self, body: Callable[..., Generator], args: list, total: int, desc: str, on_result: Callable[[Any], None]) -> GeneratorWorker:
        """Run ``body(*args, reference, source)`` (a generator yielding ``total`` times) on a napari
        thread worker with a progress bar; ``on_result`` gets what it returns, on the GUI thread."""
        from napari.qt.threading import create_worker

        layer = self.layer_combo.value
        worker = create_worker(
            body,
            *args,
            self.reference.value.strip() or None,
            layer.metadata[METADATA_KEY].get("source"),
            _progress={"total": total, "desc": desc},
            _ignore_errors=True,  # errors are shown in the widget (errored below), not raised in the event loop
        )
        worker.returned.connect(partial(self._guarded, on_result))
        worker.errored.connect(self.show_error)
        worker.finished.connect(self._done)
        self.busy = True
        self.status.value = f"computing {desc} ({total} step(s))…"
        worker.start()
        return worker

    def _guarded(self, apply: Callable[..., None], *args: Any) -> None:
        try:
            apply(*args)
        except InterPLMError as exc:
            self.show_error(exc)

    def _done(self) -> None:
        self.busy = False
        if self.status.value.endswith("…"):
            self.status.value = "done"

    def show_error(self, exc: BaseException) -> None:
        """Show a failure in the status line (InterPLMError is one line saying file, record and reason)."""
        self.status.value = f"error: {exc}" if isinstance(exc, InterPLMError) else f"error: {type(exc).__name__}: {exc}"

    def _ready(self) -> bool:
        if self.layer_combo.value is None:
            self.status.value = "open a structure first (File > Open, or the demo protein under File > Open Sample)"
            return False
        if self.busy:
            self.status.value = "still computing…"
            return False
        return True


class ColorByFeatureWidget(_StructureWidget):
    """Colour a structure's Cα points by one SAE feature's activation, with a legend."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.feature = FeaturePicker()
        self.colormap = ComboBox(label="colormap", choices=COLORMAPS, value=COLORMAPS[0])
        self.scale = ComboBox(label="scale", choices=SCALES, value=DEFAULT_SCALE,
                              tooltip="feature: 0..1 of the feature's normalised activation, as in PyMOL; chain: 0..each chain's maximum")
        self.run_button = PushButton(text="Color by feature")
        self.colorbar = Label(value="")
        self.legend = Label(value="")
        self.extend([self.feature, self.colormap, self.scale, self.run_button, self.colorbar, self.legend, self.status])
        self.run_button.changed.connect(lambda: self.color())
        self.colormap.changed.connect(lambda name: self.colorbar.native.setStyleSheet(_gradient_css(name)))
        self.colorbar.native.setStyleSheet(_gradient_css(self.colormap.value))
        self.colorbar.native.setMinimumWidth(180)
        self.legend.native.setWordWrap(True)

    def color(self, feature: int | None = None) -> GeneratorWorker | None:
        """Colour the chosen chains by ``feature`` (default: the picker's); returns the worker."""
        if not self._ready():
            return None
        feature = self.feature.value if feature is None else int(feature)
        self.feature.number.value = feature
        apply = partial(self._apply, self.layer_combo.value, feature, self.colormap.value, self.scale.value)
        return self.compute_activations(self.chosen_chains(), apply)

    def _apply(self, layer: napari.layers.Points, feature: int, colormap: str, scale: str, activations: dict[str, ChainActivations]) -> None:
        pipeline = current_pipeline()
        pipeline.check_feature(feature)
        values = point_values(layer, activations, feature)
        known = values[~np.isnan(values)]
        low, high = (float(known.min()), float(known.max())) if known.size else (0.0, 0.0)
        # one scale with PyMOL (core.interpret.colorscale): 0..1 of the feature, or each chain to its own maximum
        unit, tops = np.full(len(values), np.nan), []
        chain_of_point = layer.features["chain"].to_numpy()
        for chain_id in activations:
            points = np.flatnonzero(chain_of_point == chain_id)
            unit[points], top = unit_values(values[points], scale)
            tops.append(top)
        layer.features = layer.features.assign(activation=values)  # napari shows it when hovering a point
        layer.face_color = activation_colors(unit, colormap, 0.0, 1.0)
        layer.metadata[METADATA_KEY]["colored_by"] = {"feature": feature, "colormap": colormap, "scale": scale, "max": high}
        self.legend.value = (
            f"feature {feature}, chain {', '.join(activations)}: colours {scale_legend(scale, tops)}; here {low:.3f} to {high:.3f}; "
            f"grey: no value\n{concept_text(pipeline.database, feature)}"
        )
        self.status.value = f"{int(known.size)} of {len(values)} residues coloured"
        if self.viewer.dims.ndisplay == 2:  # a structure is only readable in 3D
            self.viewer.dims.ndisplay = 3
            self.viewer.reset_view()


class TopFeaturesWidget(_StructureWidget):
    """The features most active, on average, at the residues selected in the Points layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, chain_picker=False)  # the selection says which chains
        self.k = SpinBox(label="how many", value=10, min=1, max=200)
        self.run_button = PushButton(text="Top features at selected residues")
        self.table = Table(value=pd.DataFrame(columns=HIT_COLUMNS))
        self.hits: list = []
        self.extend([self.k, self.run_button, self.status, self.table])
        self.run_button.changed.connect(lambda: self.show_top())

    def show_top(self) -> GeneratorWorker | None:
        """Rank features at ``layer.selected_data``; returns the worker (None without a selection)."""
        if not self._ready():
            return None
        layer = self.layer_combo.value
        points = sorted(layer.selected_data)
        if not points:
            self.status.value = "select residues first (the Points layer's select tool, or Shift+click)"
            return None
        chain_ids = list(dict.fromkeys(layer.features["chain"].to_numpy()[points]))
        chains = [layer_chains(layer)[c] for c in chain_ids]
        return self.compute_activations(chains, partial(self._apply, layer, points, int(self.k.value)))

    def _apply(self, layer: napari.layers.Points, points: list[int], k: int, activations: dict[str, ChainActivations]) -> None:
        database = session_database()
        matrix, rows = selected_rows(layer, activations, points)
        if not rows:
            raise InterPLMError("none of the selected residues maps to a position of the embedded sequence")
        self.hits = database.features_active_at(matrix, rows, k=k)
        self.table.value = hit_table(database, [h.feature for h in self.hits], [h.score for h in self.hits])
        self.status.value = f"{len(self.hits)} active feature(s) over {len(rows)} residue(s)"


class ActivationProfileWidget(_StructureWidget):
    """A feature's activation along the embedded sequence of each chosen chain (matplotlib)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(napari_viewer)
        self.feature = FeaturePicker()
        self.run_button = PushButton(text="Plot activation")
        self.extend([self.feature, self.run_button, self.status])
        self.figure = Figure(figsize=(4.5, 2.6), tight_layout=True)
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.native.layout().addWidget(self.canvas)
        self.run_button.changed.connect(lambda: self.plot())

    def plot(self, feature: int | None = None) -> GeneratorWorker | None:
        """Plot ``feature`` (default: the picker's) along the chosen chains; returns the worker."""
        if not self._ready():
            return None
        feature = self.feature.value if feature is None else int(feature)
        self.feature.number.value = feature
        return self.compute_activations(self.chosen_chains(), partial(self._apply, feature))

    def _apply(self, feature: int, activations: dict[str, ChainActivations]) -> None:
        current_pipeline().check_feature(feature)
        self.axes.clear()
        for chain_id, acts in activations.items():
            self.axes.plot(np.arange(1, len(acts.sequence) + 1), acts.activations[:, feature], label=f"chain {chain_id}", lw=1.2)
        self.axes.set(xlabel="position in embedded sequence", ylabel="activation", title=f"feature {feature}")
        if len(activations) > 1:
            self.axes.legend(fontsize="small")
        self.canvas.draw_idle()
        self.status.value = concept_text(current_pipeline().database, feature)


class FeatureNeighboursWidget(Container):
    """A feature's description and best concept, and the features of its cluster (nearest first)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.viewer = napari_viewer
        self.feature = FeaturePicker()
        self.k = SpinBox(label="neighbours", value=10, min=1, max=100)
        self.run_button = PushButton(text="Describe and find neighbours")
        self.about = Label(value="")
        self.about.native.setWordWrap(True)
        self.table = Table(value=pd.DataFrame(columns=HIT_COLUMNS))
        self.neighbours: list[int] = []
        super().__init__(widgets=[self.feature, self.k, self.run_button, self.about, self.table])
        self.run_button.changed.connect(lambda: self.find_neighbours())

    def find_neighbours(self, feature: int | None = None) -> list[int]:
        """Describe ``feature`` (default: the picker's) and list its cluster neighbours; returns them.

        Database queries take milliseconds, so this runs on the GUI thread.
        """
        feature = self.feature.value if feature is None else int(feature)
        self.feature.number.value = feature
        try:
            database = session_database()
            description = database.description(feature)
            # cluster_neighbours came with the clusters module; older databases' readers lack it
            find = getattr(database, "cluster_neighbours", None)
            self.neighbours = find(feature, k=int(self.k.value)) if find else []
        except InterPLMError as exc:
            self.about.value = f"error: {exc}"
            return []
        self.about.value = (
            f"feature {feature}: {description or 'no description yet (interplm describe)'}\n{concept_text(database, feature)}\n"
            + (f"{len(self.neighbours)} neighbour(s) in its cluster" if self.neighbours else "no cluster neighbours (none clustered: interplm cluster)")
        )
        self.table.value = hit_table(database, self.neighbours, [None] * len(self.neighbours))
        return self.neighbours


def iter_mutation_scans(
    chains: Sequence[StructureChain], residues: dict[str, list[int]], feature: int, to: str, reference: str | None = None, source: str | None = None
) -> Generator[None, None, pd.DataFrame]:
    """Worker body of the mutation scan: the chains' activations, then a scan of each chain's
    ``residues`` (indices into its residues), yielding after each chain; returns the joined table."""
    activations = yield from iter_chain_activations(chains, reference, source)
    pipeline = current_pipeline()
    tables = []
    for chain in chains:
        tables.append(scan_chain(pipeline, activations[chain.chain_id], feature, residues[chain.chain_id], to))
        yield
    return pd.concat(tables, ignore_index=True)


class MutationScanWidget(_StructureWidget):
    """In-silico mutation scan: every single mutant of the chosen residues, the change of one feature
    at the residue and summed over the chain; the points are coloured by each residue's largest drop."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.feature = FeaturePicker()
        self.to = ComboBox(label="mutate to", choices=["all", *STANDARD_AMINO_ACIDS], value="all")
        self.positions = LineEdit(label="residues", tooltip="residue numbers as in the file, e.g. 25-30,52A; empty: the selected points, else every residue")
        self.run_button = PushButton(text="Scan mutations")
        self.table = Table(value=pd.DataFrame(columns=SCAN_COLUMNS))
        self.result: pd.DataFrame | None = None
        self.extend([self.feature, self.to, self.positions, self.run_button, self.status, self.table])
        self.run_button.changed.connect(lambda: self.scan())

    def chosen_residues(self) -> dict[str, list[int]]:
        """Per chosen chain, the residue indices to scan: the positions field, else the selected points, else all."""
        layer = self.layer_combo.value
        chains = {c.chain_id: c for c in self.chosen_chains()}
        text = self.positions.value.strip()
        if text:
            return {cid: select_labels([r.label for r in c.residues], text, record=f"chain {cid}") for cid, c in chains.items()}
        points = sorted(layer.selected_data)
        if points:
            picked = layer.features.iloc[points]
            residues = {cid: sorted(set(picked.loc[picked["chain"] == cid, "seq_index"].astype(int))) for cid in chains}
            return {cid: rows for cid, rows in residues.items() if rows}
        return {cid: list(range(len(c.residues))) for cid, c in chains.items()}

    def scan(self, feature: int | None = None) -> GeneratorWorker | None:
        """Scan the chosen residues for ``feature`` (default: the picker's); returns the worker."""
        if not self._ready():
            return None
        feature = self.feature.value if feature is None else int(feature)
        self.feature.number.value = feature
        try:
            current_pipeline().check_feature(feature)
            residues = self.chosen_residues()
        except InterPLMError as exc:
            self.show_error(exc)
            return None
        chains = [c for c in self.chosen_chains() if c.chain_id in residues]
        apply = partial(self._apply, self.layer_combo.value, feature)
        return self.start_worker(iter_mutation_scans, [chains, residues, feature, self.to.value], 2 * len(chains), "mutation scan", apply)

    def _apply(self, layer: napari.layers.Points, feature: int, table: pd.DataFrame) -> None:
        self.result = table
        self.table.value = table
        drops = largest_drops(table, by=("chain", "resi"))
        residues, chains = layer.features, layer_chains(layer)
        keys = [(c, chains[c].residues[int(i)].label) for c, i in zip(residues["chain"], residues["seq_index"])]
        values = np.array([drops.get(key, np.nan) for key in keys], dtype=np.float64)
        layer.features = residues.assign(largest_drop=values)
        layer.face_color = activation_colors(values, "white_red", 0.0, 1.0)
        self.status.value = f"feature {feature}: {len(table)} mutants of {len(drops)} residues; colour: largest drop 0 to 1, grey: not scanned"

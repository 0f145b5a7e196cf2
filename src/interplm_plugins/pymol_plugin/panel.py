"""The InterPLM panel in PyMOL's Plugin menu: look a feature up, read what it means, colour by it.

The data a panel shows comes from :func:`feature_details` and :func:`search_features` (plain
functions over the session pipeline's feature database, testable without Qt); the widget only
lays them out and calls the ``interplm`` command functions. Errors of the project's own type go
to the panel's status line, never as tracebacks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from pymol import CmdException, cmd
from pymol.Qt import QtCore, QtWidgets

from interplm_plugins.core.database.schema import NO_CONCEPT_MATCH, ConceptMatch, Example, FeatureHit, concept_label
from interplm_plugins.core.interpret.pipeline import Pipeline
from interplm_plugins.errors import InterPLMError
from interplm_plugins.pymol_plugin import commands
from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE
from interplm_plugins.session import current_pipeline

_CONTEXT = 6  # residues shown either side of an example's peak


@dataclass
class FeatureDetails:
    """Everything the panel shows about one feature (empty parts where the database lacks them)."""

    feature: int
    stats: dict[str, Any] | None = None  # FeatureDatabase.feature_info
    description: str | None = None
    concepts: list[ConceptMatch] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    neighbours: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines of text: description, activity statistics, best concept."""
        lines = [f"Feature {self.feature}"]
        lines.append(self.description or "(no description in the database)")
        if self.stats:
            lines.append(
                f"active on {self.stats['freq_residue']:.2%} of residues, {self.stats['freq_protein']:.1%} of proteins; "
                f"max {self.stats['max_activation']:.3f}, mean when active {self.stats['mean_active']:.3f}"
            )
        if self.concepts:
            lines.append(f"best concept: {self.concepts[0].label()}; {self.concepts[0].metrics_text()}")
        else:
            lines.append(f"best concept: {NO_CONCEPT_MATCH}")
        return "\n".join(lines)


def example_context(example: Example, width: int = _CONTEXT) -> str:
    """The sequence around an example's peak residue, the peak in brackets: ``KLMN[C]PQRS``."""
    seq, peak = example.sequence, example.argmax_position
    left, right = seq[max(0, peak - width) : peak], seq[peak + 1 : peak + 1 + width]
    return f"{'…' if peak > width else ''}{left}[{seq[peak]}]{right}{'…' if peak + 1 + width < len(seq) else ''}"


def feature_details(feature: int, pipeline: Pipeline | None = None, *, k_concepts: int = 5, k_examples: int = 5,
                    k_neighbours: int = 10) -> FeatureDetails:
    """What the database knows about ``feature``: statistics, description, concepts, top examples
    and, when the database has clusters, the features clustered with it."""
    pipeline = pipeline or current_pipeline()
    feature = pipeline.check_feature(int(feature))
    db = pipeline.database
    if db is None:
        return FeatureDetails(feature)
    # cluster_neighbours arrives with the clustering work; older databases and cores lack it
    neighbours = getattr(db, "cluster_neighbours", None)
    return FeatureDetails(
        feature,
        stats=db.feature_info(feature),
        description=db.description(feature),
        concepts=db.concepts_for_feature(feature, k=k_concepts),
        examples=db.top_examples(feature, k=k_examples),
        neighbours=[int(f) for f in neighbours(feature, k=k_neighbours)] if neighbours else [],
    )


def search_features(text: str, pipeline: Pipeline | None = None, k: int = 20) -> list[FeatureHit]:
    """Features whose concepts or descriptions contain ``text``, best first ([] without a database)."""
    pipeline = pipeline or current_pipeline()
    db = pipeline.database
    return db.search_features(text, k=k) if db is not None and str(text).strip() else []


def _reports_errors(method: Callable) -> Callable:
    """Show the project's errors on the status line instead of raising them into Qt's event loop."""

    @functools.wraps(method)
    def wrapper(self: InterPLMPanel, *args: Any) -> Any:
        try:
            result = method(self, *args)
        except (InterPLMError, CmdException) as err:
            self.status.setText(f"error: {err}")
            return None
        return result

    return wrapper


class InterPLMPanel(QtWidgets.QWidget):
    """Pick a feature by number or concept, see its meaning and examples, and colour a selection by it."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, _self=cmd):
        super().__init__(parent)
        self._cmd = _self
        self.setWindowTitle("InterPLM features")
        self.pipeline_label = QtWidgets.QLabel()
        self.pipeline_label.setWordWrap(True)

        self.feature_box = QtWidgets.QSpinBox()
        self.show_button = QtWidgets.QPushButton("Show")
        self.search_edit = QtWidgets.QLineEdit()
        self.search_edit.setPlaceholderText("concept or description, e.g. Zinc finger")
        self.search_button = QtWidgets.QPushButton("Search")
        self.results = QtWidgets.QListWidget()

        self.details = QtWidgets.QPlainTextEdit()
        self.details.setReadOnly(True)
        self.concepts_table = self._table(["concept", "valid F1", "test F1", "test precision", "test recall", "level"])
        self.examples_table = self._table(["protein", "peak", "at", "context", "description"])
        self.neighbours = QtWidgets.QListWidget()

        self.selection_edit = QtWidgets.QLineEdit("all")
        self.palette_box = QtWidgets.QComboBox()
        self.palette_box.setEditable(True)
        self.palette_box.addItems([DEFAULT_PALETTE, "blue_white_red", "blue_red", "grey90_orange_red", "rainbow"])
        self.uniprot_edit = QtWidgets.QLineEdit()
        self.uniprot_edit.setPlaceholderText("optional: full-length FASTA file or sequence")
        self.color_button = QtWidgets.QPushButton("Color")
        self.top_button = QtWidgets.QPushButton("Top features on selection")
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)

        pick = QtWidgets.QHBoxLayout()
        for widget in (QtWidgets.QLabel("Feature"), self.feature_box, self.show_button, self.search_edit, self.search_button):
            pick.addWidget(widget)
        form = QtWidgets.QFormLayout()
        form.addRow("Selection", self.selection_edit)
        form.addRow("Palette", self.palette_box)
        form.addRow("UniProt", self.uniprot_edit)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.color_button)
        buttons.addWidget(self.top_button)
        self.tabs = QtWidgets.QTabWidget()
        for title, widget in (("Concept matches", self.concepts_table), ("Top examples", self.examples_table), ("Cluster neighbours", self.neighbours)):
            self.tabs.addTab(widget, title)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.pipeline_label)
        layout.addLayout(pick)
        for title, widget in (("Features found", self.results), ("About the feature", self.details)):
            layout.addWidget(QtWidgets.QLabel(f"<b>{title}</b>"))
            layout.addWidget(widget)
        self.results.setMaximumHeight(140)  # the tabs below take the room that is left
        self.details.setMaximumHeight(120)
        layout.addWidget(self.tabs, stretch=1)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)

        self.show_button.clicked.connect(lambda: self.show_feature(self.feature_box.value()))
        self.search_button.clicked.connect(lambda: self.search(self.search_edit.text()))
        self.search_edit.returnPressed.connect(lambda: self.search(self.search_edit.text()))
        for feature_list in (self.results, self.neighbours):
            feature_list.itemClicked.connect(self._item_feature)
        self.color_button.clicked.connect(lambda: self.color())  # clicked(checked) would pass a bool
        self.top_button.clicked.connect(lambda: self.top())
        self.refresh()

    @staticmethod
    def _table(headers: list[str]) -> QtWidgets.QTableWidget:
        table = QtWidgets.QTableWidget(0, len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        table.horizontalHeader().setStretchLastSection(True)
        table.verticalHeader().setVisible(False)
        return table

    @staticmethod
    def _fill_table(table: QtWidgets.QTableWidget, rows: list[list[str]]) -> None:
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    @staticmethod
    def _fill_features(widget: QtWidgets.QListWidget, entries: list[tuple[int, str]]) -> None:
        widget.clear()
        for feature, text in entries:
            item = QtWidgets.QListWidgetItem(text)
            item.setData(QtCore.Qt.UserRole, feature)
            widget.addItem(item)

    def _item_feature(self, item: QtWidgets.QListWidgetItem) -> None:
        self.show_feature(int(item.data(QtCore.Qt.UserRole)))

    @_reports_errors
    def refresh(self) -> None:
        """Show the session's pipeline (it may have changed with ``interplm use``)."""
        pipeline = current_pipeline()
        described = pipeline.describe()
        self.pipeline_label.setText(f"model {described['model']}, layer {described['layer']}\nSAE {described['sae']}\ndatabase {described['database']}")
        self.feature_box.setRange(0, pipeline.num_features - 1)
        has_db = pipeline.database is not None
        self.search_button.setEnabled(has_db)
        self.search_edit.setEnabled(has_db)

    @_reports_errors
    def show_feature(self, feature: int) -> FeatureDetails:
        """Fill the panel with ``feature``'s details and make it the feature the Color button uses."""
        details = feature_details(feature)
        self.feature_box.setValue(details.feature)
        self.details.setPlainText(details.summary())
        self._fill_table(self.concepts_table, [
            [m.concept, f"{m.valid_f1:.2f}", f"{m.f1:.2f}", f"{m.precision:.2f}", f"{m.recall:.2f}", m.level or "-"]
            for m in details.concepts
        ])  # fmt: skip
        self._fill_table(self.examples_table, [
            [e.protein_id, f"{e.max_activation:.3f}", f"{e.sequence[e.argmax_position]}{e.argmax_position + 1}", example_context(e), e.description]
            for e in details.examples
        ])  # fmt: skip
        self._fill_features(self.neighbours, [(f, f"feature {f}") for f in details.neighbours])
        self.status.setText("" if current_pipeline().database is not None else "no feature database: interplm use db PATH")
        return details

    @_reports_errors
    def search(self, text: str) -> list[FeatureHit]:
        """List the features whose concepts or descriptions match ``text``."""
        hits = search_features(text)
        self._fill_features(self.results, [(h.feature, f"{h.feature}: {h.matched or ''} (score {h.score:.2f})") for h in hits])
        self.status.setText(f"{len(hits)} feature(s) match {text!r}")
        return hits

    @_reports_errors
    def color(self) -> dict[str, Any]:
        """Colour the panel's selection by the shown feature."""
        summary = commands.color(self.selection_edit.text().strip() or "all", self.feature_box.value(), self.palette_box.currentText(),
                                 self.uniprot_edit.text().strip() or None, _self=self._cmd)  # fmt: skip
        self.status.setText(f"feature {summary['feature']} on {summary['mapped']} residues; max {summary['max']:.3f}" if summary["mapped"]
                            else "no residue of the selection got a value")  # fmt: skip
        return summary

    @_reports_errors
    def top(self) -> list[FeatureHit]:
        """List the features most active on the panel's selection."""
        hits = commands.top(self.selection_edit.text().strip() or None, 20, self.uniprot_edit.text().strip() or None, _self=self._cmd)
        self._fill_features(self.results, [
            (h.feature, f"{h.feature}: mean {h.score:.3f}" + f", {concept_label(h.best_concept)}")
            for h in hits
        ])  # fmt: skip
        self.status.setText(f"{len(hits)} feature(s) active on the selection")
        return hits


_panel: InterPLMPanel | None = None


def open_panel() -> InterPLMPanel:
    """Show the panel (one per session), as a window of PyMOL's main window when there is one."""
    global _panel
    if _panel is None:
        import pymol.gui

        _panel = InterPLMPanel(pymol.gui.get_qtwindow())  # None without PyMOL's Qt window
        _panel.setWindowFlags(_panel.windowFlags() | QtCore.Qt.Window)
    _panel.refresh()
    _panel.show()
    _panel.raise_()
    return _panel

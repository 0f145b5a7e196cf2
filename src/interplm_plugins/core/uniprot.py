"""UniProtKB entries and their sequence features, read from flat text, XML or the web TSV export.

``read_uniprot(path)`` detects the format from the content (``.gz`` is accepted):

- flat text (``ID   ...``), both the modern feature table (``FT   DOMAIN  12..45`` followed by
  ``/note="..."``, ``/ligand="..."`` qualifier lines) and the legacy column layout used before
  2019 (``FT   SIGNAL   1   22   Description.``); parsed entry by entry with ``Bio.SwissProt``;
- UniProt XML (``<uniprot>``), parsed with ElementTree (Biopython's reader drops ``<ligand>``);
- the UniProt web TSV export: columns ``Entry`` and ``Sequence`` (``Entry Name`` optional), and
  feature columns (``Binding site``, ``Helix``, ``Domain [FT]``, ...) whose cells read
  ``BINDING 461; /ligand="heme"; /note="..."; BINDING 500; ...``.

Feature types are the flat-file keys (``DOMAIN``, ``BINDING``, ``DISULFID``, ...); XML type names
are mapped to them, and a type we do not know is kept as it is written (it is simply not turned
into a concept); ``read_uniprot`` logs one warning per file counting such features by type.
Positions are 1-based and inclusive. Uncertain positions:

- ``<1`` / ``>120`` (the feature extends beyond what is annotated) keep the given number;
- ``?41`` (position uncertain but given) keeps 41;
- ``?`` (position unknown) cannot be placed: the feature is dropped;
- features on another isoform (``P00519-2:2``) and features reaching outside the sequence are
  dropped too. Every dropped feature is listed in ``UniProtEntry.dropped`` with the reason, and
  ``read_uniprot`` logs one warning per file with the counts: never silently.

A file cut in the middle of an entry, a malformed feature or an invalid sequence raises
:class:`InterPLMError` naming the file, the accession and the reason; so does a file that is not
UTF-8 text or a corrupt ``.gz``. A UTF-8 byte-order mark and CRLF line endings are accepted.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from interplm_plugins.core.sequences import clean_sequence
from interplm_plugins.errors import InterPLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UniProtFeature:
    """One feature of the feature table; ``start``/``end`` are 1-based inclusive.

    ``description`` is the ``/note`` (modern flat, TSV), the description text (legacy flat) or the
    ``description`` attribute (XML); ``ligand`` is the bound ligand of binding features (modern
    ``/ligand``, XML ``<ligand><name>``; for legacy ``BINDING``/``METAL``/``NP_BIND``/``CA_BIND``
    the first clause of the description). Disulfide bonds and cross-links give the two bonded
    residues as ``start`` and ``end``.
    """

    type: str
    start: int
    end: int
    description: str = ""
    ligand: str = ""
    evidence: str = ""


@dataclass(frozen=True)
class UniProtEntry:
    """One UniProtKB entry: its first accession, entry name, canonical sequence and features.

    ``dropped`` lists ``(type, location, reason)`` of the features that could not be placed on
    the sequence (unknown position, another isoform, outside the sequence).
    """

    accession: str
    entry_name: str
    sequence: str
    features: tuple[UniProtFeature, ...]
    dropped: tuple[tuple[str, str, str], ...] = field(default=())


#: XML feature type -> flat-file feature key.
XML_FEATURE_KEYS = {
    "active site": "ACT_SITE",
    "binding site": "BINDING",
    "calcium-binding region": "CA_BIND",
    "chain": "CHAIN",
    "coiled-coil region": "COILED",
    "compositionally biased region": "COMPBIAS",
    "cross-link": "CROSSLNK",
    "disulfide bond": "DISULFID",
    "DNA-binding region": "DNA_BIND",
    "domain": "DOMAIN",
    "glycosylation site": "CARBOHYD",
    "helix": "HELIX",
    "initiator methionine": "INIT_MET",
    "intramembrane region": "INTRAMEM",
    "lipid moiety-binding region": "LIPID",
    "metal ion-binding site": "METAL",
    "modified residue": "MOD_RES",
    "mutagenesis site": "MUTAGEN",
    "non-consecutive residues": "NON_CONS",
    "non-standard amino acid": "NON_STD",
    "non-terminal residue": "NON_TER",
    "nucleotide phosphate-binding region": "NP_BIND",
    "peptide": "PEPTIDE",
    "propeptide": "PROPEP",
    "region of interest": "REGION",
    "repeat": "REPEAT",
    "sequence conflict": "CONFLICT",
    "sequence uncertainty": "UNSURE",
    "sequence variant": "VARIANT",
    "short sequence motif": "MOTIF",
    "signal peptide": "SIGNAL",
    "site": "SITE",
    "splice variant": "VAR_SEQ",
    "strand": "STRAND",
    "topological domain": "TOPO_DOM",
    "transit peptide": "TRANSIT",
    "transmembrane region": "TRANSMEM",
    "turn": "TURN",
    "unsure residue": "UNSURE",
    "zinc finger region": "ZN_FING",
}

#: Legacy flat-file binding keys whose description names the ligand (merged into BINDING in 2019+).
LEGACY_BINDING_KEYS = frozenset({"BINDING", "METAL", "NP_BIND", "CA_BIND"})

#: TSV columns read as feature columns (any other column whose header ends in ``[FT]`` is too).
TSV_FEATURE_COLUMNS = frozenset(
    {
        "Active site", "Binding site", "Calcium binding", "DNA binding", "Metal binding", "Nucleotide binding",
        "Site", "Alternative sequence", "Natural variant", "Non-adjacent residues", "Non-standard residue",
        "Non-terminal residue", "Sequence conflict", "Sequence uncertainty", "Chain", "Cross-link",
        "Disulfide bond", "Glycosylation", "Initiator methionine", "Lipidation", "Modified residue", "Peptide",
        "Propeptide", "Signal peptide", "Transit peptide", "Beta strand", "Helix", "Turn", "Mutagenesis",
        "Coiled coil", "Compositional bias", "Domain [FT]", "Motif", "Region", "Repeat", "Zinc finger",
        "Intramembrane", "Topological domain", "Transmembrane",
    }
)

#: Feature keys UniProt uses (modern and legacy flat files); other types are kept but counted in a warning.
KNOWN_FEATURE_KEYS = frozenset(XML_FEATURE_KEYS.values()) | {"VARSPLIC", "SE_CYS", "NON_CONS", "NON_TER", "CONFLICT"}

# Legacy descriptions carry the evidence as a trailing parenthesis; XML has it as status=.
_LEGACY_EVIDENCE = re.compile(r"(?:^|\s*\()(By similarity|Potential|Probable)\)?\.?$")


def read_uniprot(path: str | os.PathLike) -> list[UniProtEntry]:
    """Read every entry of a UniProt flat-text, XML or TSV file (format detected; ``.gz`` ok)."""
    path = Path(path)
    if not path.is_file():
        raise InterPLMError("no such file", file=path)
    try:
        with _open_text(path) as handle:
            head = handle.read(4096)
            handle.seek(0)
            start = head.lstrip("\ufeff \t\r\n")
            if start.startswith("ID   "):
                entries = list(_read_flat(handle, path))
            elif start.startswith("<"):
                entries = list(_read_xml(handle, path))
            elif "\t" in start.split("\n", 1)[0] and "Entry" in start.split("\n", 1)[0].split("\t"):
                entries = list(_read_tsv(handle, path))
            else:
                raise InterPLMError(
                    "not a UniProt file (expected flat text starting 'ID   ', XML, or a TSV with an 'Entry' column)",
                    file=path,
                )
    except UnicodeDecodeError as exc:
        raise InterPLMError(f"not a text file ({exc.reason} at byte {exc.start})", file=path) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InterPLMError(f"cannot read compressed file ({exc})", file=path) from None
    except OSError as exc:
        raise InterPLMError(f"cannot read file ({exc})", file=path) from None
    if not entries:
        raise InterPLMError("no UniProt entries found", file=path)
    _check_unique(entries, path)
    _warn_dropped(entries, path)
    _warn_unknown_types(entries, path)
    return entries


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig: a byte-order mark is dropped rather than read as part of the first line
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=None)
    return open(path, "r", encoding="utf-8-sig", newline=None)


def _check_unique(entries: list[UniProtEntry], path: Path) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.accession in seen:
            raise InterPLMError("duplicate accession", file=path, record=entry.accession)
        seen.add(entry.accession)


def _warn_dropped(entries: list[UniProtEntry], path: Path) -> None:
    reasons = Counter(reason for e in entries for _, _, reason in e.dropped)
    if reasons:
        detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        log.warning("%s: dropped %d features that cannot be placed on the sequence (%s)", path, sum(reasons.values()), detail)


def unknown_feature_types(entries: list[UniProtEntry]) -> Counter:
    """How many features of each type outside :data:`KNOWN_FEATURE_KEYS` the entries hold."""
    return Counter(f.type for e in entries for f in e.features if f.type not in KNOWN_FEATURE_KEYS)


def _warn_unknown_types(entries: list[UniProtEntry], path: Path) -> None:
    unknown = unknown_feature_types(entries)
    if unknown:
        detail = ", ".join(f"{n} {ftype}" for ftype, n in unknown.most_common())
        log.warning(
            "%s: kept %d features of types this toolkit does not know, which give no concept (%s)",
            path, sum(unknown.values()), detail,
        )  # fmt: skip


class _FeatureCollector:
    """Turns raw (type, start, end, ...) into placed features or dropped records for one entry."""

    def __init__(self, sequence: str):
        self.length = len(sequence)
        self.features: list[UniProtFeature] = []
        self.dropped: list[tuple[str, str, str]] = []

    def add(
        self,
        ftype: str,
        start: int | None,
        end: int | None,
        location_text: str,
        *,
        isoform: str | None = None,
        description: str = "",
        ligand: str = "",
        evidence: str = "",
    ) -> None:
        if isoform:
            self.dropped.append((ftype, location_text, "on another isoform"))
        elif start is None or end is None:
            self.dropped.append((ftype, location_text, "unknown position"))
        elif not 1 <= start <= end <= self.length:
            self.dropped.append((ftype, location_text, "outside the sequence"))
        else:
            self.features.append(UniProtFeature(ftype, start, end, description, ligand, evidence))


# --- flat text ---------------------------------------------------------------------------------


def _read_flat(handle: IO[str], path: Path) -> Iterator[UniProtEntry]:
    """Split the stream at ``//`` lines so a truncated last entry is reported with its accession."""
    chunk: list[str] = []
    for line in handle:
        chunk.append(line)
        if line.startswith("//"):
            yield _parse_flat_entry("".join(chunk), path)
            chunk = []
    if "".join(chunk).strip():
        raise InterPLMError(
            "file ends in the middle of an entry (no '//' line): the file is truncated",
            file=path,
            record=_flat_accession("".join(chunk)),
        )


def _flat_accession(text: str) -> str:
    match = re.search(r"^AC   ([^;\s]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    match = re.search(r"^ID   (\S+)", text, re.MULTILINE)
    return match.group(1) if match else "?"


def _parse_flat_entry(text: str, path: Path) -> UniProtEntry:
    from Bio import BiopythonParserWarning, SwissProt
    from Bio.SeqFeature import UnknownPosition

    accession = _flat_accession(text)
    try:
        with warnings.catch_warnings():
            # e.g. 'Possibly corrupt RX line': about references, which are not read; the one-line
            # CLI error must not be preceded by library warnings
            warnings.simplefilter("ignore", BiopythonParserWarning)
            record = SwissProt.read(io.StringIO(text))
    except Exception as exc:  # Biopython raises ValueError, AssertionError, IndexError, ... on bad text
        reason = " ".join(str(exc).split())[:200]
        if not isinstance(exc, ValueError) or not reason:  # KeyError('description') alone says little
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise InterPLMError(f"malformed entry ({reason})", file=path, record=accession) from None
    accession = record.accessions[0] if record.accessions else accession
    sequence = clean_sequence(record.sequence, file=path, record=accession)
    if record.seqinfo and record.seqinfo[0] != len(sequence):
        raise InterPLMError(
            f"sequence has {len(sequence)} residues but the SQ line says {record.seqinfo[0]}", file=path, record=accession
        )
    collector = _FeatureCollector(sequence)
    for feat in record.features:
        loc = feat.location
        quals = feat.qualifiers
        if loc is None:
            collector.add(feat.type, None, None, "?")
            continue
        start = None if isinstance(loc.start, UnknownPosition) else int(loc.start) + 1
        end = None if isinstance(loc.end, UnknownPosition) else int(loc.end)
        if "description" in quals:  # legacy column layout: free text with the evidence in brackets
            description, evidence = _split_legacy_evidence(quals["description"])
            ligand = description.split(";")[0].strip() if feat.type in LEGACY_BINDING_KEYS else ""
        else:
            description, evidence = quals.get("note", ""), quals.get("evidence", "")
            ligand = quals.get("ligand", "")
        collector.add(
            feat.type,
            start,
            end,
            _location_text(start, end),
            isoform=loc.ref,
            description=description,
            ligand=ligand,
            evidence=evidence,
        )
    return UniProtEntry(accession, record.entry_name or "", sequence, tuple(collector.features), tuple(collector.dropped))


def _split_legacy_evidence(text: str) -> tuple[str, str]:
    text = text.strip()
    match = _LEGACY_EVIDENCE.search(text)
    evidence = ""
    if match:
        evidence = match.group(1).lower()
        text = text[: match.start()]
    return text.rstrip(".").strip(), evidence


def _location_text(start: int | None, end: int | None) -> str:
    s = "?" if start is None else str(start)
    e = "?" if end is None else str(end)
    return s if s == e else f"{s}..{e}"


# --- XML ---------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _read_xml(handle: IO[str], path: Path) -> Iterator[UniProtEntry]:
    last = None
    try:
        for event, elem in ET.iterparse(handle, events=("end",)):
            if _local(elem.tag) == "entry":
                entry = _parse_xml_entry(elem, path)
                last = entry.accession
                elem.clear()
                yield entry
    except ET.ParseError as exc:
        where = f"after entry {last}" if last else "before the first complete entry"
        raise InterPLMError(f"malformed or truncated XML {where} ({exc})", file=path) from None


def _xml_child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _parse_xml_entry(elem: ET.Element, path: Path) -> UniProtEntry:
    acc_el = _xml_child(elem, "accession")
    accession = (acc_el.text or "").strip() if acc_el is not None else ""
    if not accession:
        raise InterPLMError("entry without an <accession>", file=path)
    name_el = _xml_child(elem, "name")
    seq_el = _xml_child(elem, "sequence")
    if seq_el is None or not (seq_el.text or "").strip():
        raise InterPLMError("entry without a <sequence>", file=path, record=accession)
    sequence = clean_sequence(seq_el.text or "", file=path, record=accession)
    declared = seq_el.get("length")
    if declared is not None and declared.isdigit() and int(declared) != len(sequence):
        raise InterPLMError(
            f"sequence has {len(sequence)} residues but its length attribute says {declared}", file=path, record=accession
        )
    collector = _FeatureCollector(sequence)
    for feat in (c for c in elem if _local(c.tag) == "feature"):
        xml_type = feat.get("type", "")
        ftype = XML_FEATURE_KEYS.get(xml_type, xml_type)
        loc = _xml_child(feat, "location")
        if loc is None:
            collector.add(ftype, None, None, "?")
            continue
        start, end = _xml_location(loc, path, accession)
        ligand_el = _xml_child(feat, "ligand")
        ligand = ""
        if ligand_el is not None:
            lig_name = _xml_child(ligand_el, "name")
            ligand = (lig_name.text or "").strip() if lig_name is not None else ""
        description = feat.get("description", "")
        if not ligand and ftype in LEGACY_BINDING_KEYS:
            ligand = description.split(";")[0].strip()
        collector.add(
            ftype,
            start,
            end,
            _location_text(start, end),
            isoform=loc.get("sequence"),
            description=description,
            ligand=ligand,
            evidence=feat.get("status", "") or feat.get("evidence", ""),
        )
    name = (name_el.text or "").strip() if name_el is not None else ""
    return UniProtEntry(accession, name, sequence, tuple(collector.features), tuple(collector.dropped))


def _xml_location(loc: ET.Element, path: Path, accession: str) -> tuple[int | None, int | None]:
    def pos(el: ET.Element | None) -> int | None:
        if el is None or el.get("status") == "unknown" or el.get("position") is None:
            return None
        try:
            return int(el.get("position", ""))
        except ValueError:
            raise InterPLMError(f"bad feature position {el.get('position')!r}", file=path, record=accession) from None

    single = _xml_child(loc, "position")
    if single is not None:
        p = pos(single)
        return p, p
    return pos(_xml_child(loc, "begin")), pos(_xml_child(loc, "end"))


# --- TSV ---------------------------------------------------------------------------------------

# One feature in a TSV cell: KEY LOCATION then any number of ; /name="value" qualifiers.
_TSV_FEATURE = re.compile(
    r'\s*(?P<key>[A-Z][A-Z0-9_]*) (?P<loc>[^\s;]+)(?P<quals>(?:;\s*/\w+="[^"]*")*)\s*;?\s*'
)
_TSV_QUALIFIER = re.compile(r'/(\w+)="([^"]*)"')
_TSV_POSITION = re.compile(r"^[<>?]*(\d*)\??$")


def _read_tsv(handle: IO[str], path: Path) -> Iterator[UniProtEntry]:
    # UniProt's TSV export never quotes: a cell starting with '"' (a protein name such as
    # '"Probable" kinase') is text, not the start of a quoted cell spanning later rows.
    reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        yield from _tsv_rows(reader, path)
    except csv.Error as exc:  # e.g. a cell beyond csv's field size limit
        raise InterPLMError(f"unreadable TSV after line {reader.line_num} ({exc})", file=path) from None


def _tsv_rows(reader: csv.DictReader, path: Path) -> Iterator[UniProtEntry]:
    columns = reader.fieldnames or []
    for needed in ("Entry", "Sequence"):
        if needed not in columns:
            raise InterPLMError(f"TSV has no {needed!r} column (columns: {', '.join(columns)})", file=path)
    feature_columns = [c for c in columns if c in TSV_FEATURE_COLUMNS or c.endswith("[FT]")]
    for line_no, row in enumerate(reader, 2):
        accession = (row.get("Entry") or "").strip()
        if not accession:
            raise InterPLMError(f"line {line_no}: empty 'Entry'", file=path)
        if None in row:  # more cells than headers: a broken row
            raise InterPLMError(f"line {line_no}: more cells than column headers", file=path, record=accession)
        sequence = clean_sequence(row.get("Sequence") or "", file=path, record=accession)
        declared = (row.get("Length") or "").strip()
        if declared.isdigit() and int(declared) != len(sequence):
            raise InterPLMError(
                f"sequence has {len(sequence)} residues but 'Length' says {declared} (row cut short?)",
                file=path,
                record=accession,
            )
        collector = _FeatureCollector(sequence)
        for column in feature_columns:
            for key, loc, quals in _tsv_cell_features(row.get(column) or "", column, path, accession):
                isoform, _, loc = loc.rpartition(":")
                start_text, _, end_text = loc.partition("..")
                start = _tsv_position(start_text, path, accession)
                end = _tsv_position(end_text or start_text, path, accession)
                collector.add(
                    key,
                    start,
                    end,
                    loc,
                    isoform=isoform or None,
                    description=quals.get("note", ""),
                    ligand=quals.get("ligand", ""),
                    evidence=quals.get("evidence", ""),
                )
        name = (row.get("Entry Name") or "").strip()
        yield UniProtEntry(accession, name, sequence, tuple(collector.features), tuple(collector.dropped))


def _tsv_cell_features(cell: str, column: str, path: Path, accession: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    pos = 0
    cell = cell.strip()
    while pos < len(cell):
        match = _TSV_FEATURE.match(cell, pos)
        if not match or match.end() == pos:
            raise InterPLMError(
                f"column {column!r}: cannot read a feature at {cell[pos:pos + 40]!r}", file=path, record=accession
            )
        yield match["key"], match["loc"], dict(_TSV_QUALIFIER.findall(match["quals"]))
        pos = match.end()


def _tsv_position(text: str, path: Path, accession: str) -> int | None:
    match = _TSV_POSITION.match(text)
    if not match:
        raise InterPLMError(f"bad feature position {text!r}", file=path, record=accession)
    return int(match.group(1)) if match.group(1) else None  # a bare '?' is an unknown position


def read_uniprot_files(paths: Iterable[str | os.PathLike]) -> tuple[list[UniProtEntry], list[str]]:
    """Entries of several UniProt files in order, each accession once: ``(entries, skipped accessions)``.

    An accession met again in a later file is skipped, the first reading kept; where the later
    sequence differs (another release), one warning per file counts those.
    """
    entries: dict[str, UniProtEntry] = {}
    skipped: list[str] = []
    for path in map(Path, paths):
        differing = 0
        for entry in read_uniprot(path):
            first = entries.setdefault(entry.accession, entry)
            if first is not entry:
                skipped.append(entry.accession)
                differing += first.sequence != entry.sequence
        if differing:
            log.warning("%s: %d entries already read from an earlier file with another sequence (another release); the first kept", path, differing)
    return list(entries.values()), skipped

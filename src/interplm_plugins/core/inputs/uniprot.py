"""UniProtKB entries and their sequence features, read from flat text, XML, REST JSON or the web TSV export.

``read_uniprot(path)`` detects the format from the content (``.gz`` is accepted):

- flat text (``ID   ...``), both the modern feature table (``FT   DOMAIN  12..45`` followed by
  ``/note="..."``, ``/ligand="..."`` qualifier lines) and the legacy column layout used before
  2019 (``FT   SIGNAL   1   22   Description.``); parsed entry by entry with ``Bio.SwissProt``;
- UniProt XML (``<uniprot>``), parsed with ElementTree (Biopython's reader drops ``<ligand>``);
- UniProt REST JSON, what rest.uniprot.org and the website serve (``{``): one entry object or a
  search result ``{"results": [entry, ...]}``; ``primaryAccession``, ``uniProtkbId``,
  ``sequence.value`` and ``features[]`` (``type``, ``location.start/end.value`` and
  ``.modifier``, ``location.sequence``, ``description``, ``ligand.name``, ``evidences``) are read;
- the UniProt web TSV export: columns ``Entry`` and ``Sequence`` (``Entry Name`` optional), and
  feature columns (``Binding site``, ``Helix``, ``Domain [FT]``, ...) whose cells read
  ``BINDING 461; /ligand="heme"; /note="..."; BINDING 500; ...``.

Feature types are the flat-file keys (``DOMAIN``, ``BINDING``, ``DISULFID``, ...); XML and REST JSON
type names are mapped to them by one table, :data:`FEATURE_TYPE_NAMES`, and a type we do not know
is kept as it is written (it is simply not turned into a concept); ``read_uniprot`` logs one
warning per file counting such features by type. Positions are 1-based and inclusive. Uncertain
positions:

- ``<1`` / ``>120`` (the feature extends beyond what is annotated; JSON modifier ``OUTSIDE``)
  keep the given number;
- ``?41`` (position uncertain but given; JSON ``UNSURE``) keeps 41;
- ``?`` (position unknown; JSON ``UNKNOWN`` or a null value) cannot be placed: the feature is dropped;
- features on another isoform (``P00519-2:2``; JSON ``location.sequence``) and features reaching
  outside the sequence are dropped too. Every dropped feature is listed in
  ``UniProtEntry.dropped`` with the reason, and ``read_uniprot`` logs one warning per file with
  the counts: never silently.

Descriptions are UniProt's: in XML and JSON the alternative sequence of a variant, mutagenesis,
conflict or splice feature is a separate field, so ``C->S: Loss of activity`` in flat text reads
``Loss of activity`` there.

A file cut in the middle of an entry, a malformed feature or an invalid sequence raises
:class:`InterPLMError` naming the file, the accession and the reason (for JSON, syntax errors
give line and column and name the last accession before them); so does a file that is not
UTF-8 text or a corrupt ``.gz``. A UTF-8 byte-order mark and CRLF line endings are accepted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
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

from interplm_plugins.core.inputs.sequences import clean_sequence
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


#: Every feature type UniProtKB serves, as (flat-file key, XML ``type``, REST JSON ``type``): the
#: name, value and display name of uniprot-core's ``UniprotKBFeatureType``, in its order.
FEATURE_TYPE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("INIT_MET", "initiator methionine", "Initiator methionine"),
    ("SIGNAL", "signal peptide", "Signal"),
    ("PROPEP", "propeptide", "Propeptide"),
    ("TRANSIT", "transit peptide", "Transit peptide"),
    ("CHAIN", "chain", "Chain"),
    ("PEPTIDE", "peptide", "Peptide"),
    ("TOPO_DOM", "topological domain", "Topological domain"),
    ("TRANSMEM", "transmembrane region", "Transmembrane"),
    ("INTRAMEM", "intramembrane region", "Intramembrane"),
    ("DOMAIN", "domain", "Domain"),
    ("REPEAT", "repeat", "Repeat"),
    ("CA_BIND", "calcium-binding region", "Calcium binding"),
    ("ZN_FING", "zinc finger region", "Zinc finger"),
    ("DNA_BIND", "DNA-binding region", "DNA binding"),
    ("NP_BIND", "nucleotide phosphate-binding region", "Nucleotide binding"),
    ("REGION", "region of interest", "Region"),
    ("COILED", "coiled-coil region", "Coiled coil"),
    ("MOTIF", "short sequence motif", "Motif"),
    ("COMPBIAS", "compositionally biased region", "Compositional bias"),
    ("ACT_SITE", "active site", "Active site"),
    ("METAL", "metal ion-binding site", "Metal binding"),
    ("BINDING", "binding site", "Binding site"),
    ("SITE", "site", "Site"),
    ("NON_STD", "non-standard amino acid", "Non-standard residue"),
    ("MOD_RES", "modified residue", "Modified residue"),
    ("LIPID", "lipid moiety-binding region", "Lipidation"),
    ("CARBOHYD", "glycosylation site", "Glycosylation"),
    ("DISULFID", "disulfide bond", "Disulfide bond"),
    ("CROSSLNK", "cross-link", "Cross-link"),
    ("VAR_SEQ", "splice variant", "Alternative sequence"),
    ("VARIANT", "sequence variant", "Natural variant"),
    ("MUTAGEN", "mutagenesis site", "Mutagenesis"),
    ("UNSURE", "unsure residue", "Sequence uncertainty"),
    ("CONFLICT", "sequence conflict", "Sequence conflict"),
    ("NON_CONS", "non-consecutive residues", "Non-adjacent residues"),
    ("NON_TER", "non-terminal residue", "Non-terminal residue"),
    ("HELIX", "helix", "Helix"),
    ("TURN", "turn", "Turn"),
    ("STRAND", "strand", "Beta strand"),
)

#: XML feature type -> flat-file feature key ("sequence uncertainty": an older XML name of UNSURE).
XML_FEATURE_KEYS = {xml: key for key, xml, _ in FEATURE_TYPE_NAMES} | {"sequence uncertainty": "UNSURE"}

#: REST JSON feature type -> flat-file feature key.
JSON_FEATURE_KEYS = {rest: key for key, _, rest in FEATURE_TYPE_NAMES}

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

# An AC line whose first accession does not start in column 6.
_MISINDENTED_AC = re.compile(r"^AC(?!   [A-Za-z0-9]).*$", re.MULTILINE)

# Legacy descriptions carry the evidence as a trailing parenthesis; XML has it as status=.
_LEGACY_EVIDENCE = re.compile(r"(?:^|\s*\()(By similarity|Potential|Probable)\)?\.?$")


def read_uniprot(path: str | os.PathLike) -> list[UniProtEntry]:
    """Read every entry of a UniProt flat-text, XML, REST JSON or TSV file (format detected; ``.gz`` ok)."""
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
            elif start.startswith("{"):
                entries = list(_read_json(handle, path))
            elif "\t" in start.split("\n", 1)[0] and "Entry" in start.split("\n", 1)[0].split("\t"):
                entries = list(_read_tsv(handle, path))
            else:
                raise InterPLMError(
                    "not a UniProt file (expected flat text starting 'ID   ', XML, REST JSON, or a TSV with an "
                    "'Entry' column)",
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
    bad_ac = _MISINDENTED_AC.search(text)
    if bad_ac:  # Biopython reads from column 6 on: 'AC  Q00001;' would become accession '00001'
        raise InterPLMError(f"malformed AC line {bad_ac.group(0)!r} (accessions start in column 6)", file=path, record=accession)
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


# --- REST JSON ---------------------------------------------------------------------------------

# The last accession written before a JSON syntax error: the entry the error is in (or follows).
_JSON_ACCESSION = re.compile(r'"primaryAccession"\s*:\s*"([^"\\]*)"')

_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a whole number"}


def _read_json(handle: IO[str], path: Path) -> Iterator[UniProtEntry]:
    """One UniProtKB entry object, or a search result ``{"results": [entry, ...]}``."""
    text = handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        accessions = _JSON_ACCESSION.findall(text, 0, exc.pos)
        where = f"line {exc.lineno} column {exc.colno}"
        truncated = exc.pos >= len(text.rstrip())
        raise InterPLMError(
            f"JSON ends at {where} before it is complete: the file is truncated"
            if truncated
            else f"malformed JSON at {where} ({exc.msg})",
            file=path,
            record=accessions[-1] if accessions else None,
        ) from None
    except RecursionError:
        raise InterPLMError("JSON nested too deeply to be a UniProt entry", file=path) from None
    # the text starts with '{', so a document that parsed is an object
    if "results" in document:
        results = _json_expect(document["results"], list, "'results'", path, None)
        for index, item in enumerate(results):
            where = f"results[{index}]"
            yield _parse_json_entry(_json_expect(item, dict, where, path, None), where, path)
    elif "primaryAccession" in document:
        yield _parse_json_entry(document, "the entry", path)
    else:
        raise InterPLMError(
            "JSON object is neither a UniProtKB entry (no 'primaryAccession') nor a search result (no 'results')",
            file=path,
        )


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    return "null" if value is None else _JSON_KINDS.get(type(value), "a number")


def _json_expect(value: object, kind: type, what: str, path: Path, accession: str | None):
    """``value`` if it is a ``kind`` (``bool`` is no ``int``), else the one-line error naming ``what``."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InterPLMError(f"{what} is {_json_kind(value)}, not {_JSON_KINDS[kind]}", file=path, record=accession)
    return value


def _parse_json_entry(item: dict, where: str, path: Path) -> UniProtEntry:
    accession = item.get("primaryAccession")
    if not isinstance(accession, str) or not accession.strip():
        raise InterPLMError(f"{where} has no 'primaryAccession'", file=path)
    accession = accession.strip()
    sequence_obj = item.get("sequence")
    value = sequence_obj.get("value") if isinstance(sequence_obj, dict) else None
    if not isinstance(value, str) or not value.strip():
        reason = "entry without a sequence ('sequence.value')"
        if item.get("entryType") == "Inactive":  # merged or deleted entries keep only their accession
            reason = "inactive entry (merged or deleted): it has no sequence"
        raise InterPLMError(reason, file=path, record=accession)
    sequence = clean_sequence(value, file=path, record=accession)
    declared = sequence_obj.get("length")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(sequence):
        raise InterPLMError(
            f"sequence has {len(sequence)} residues but 'sequence.length' says {declared}", file=path, record=accession
        )
    collector = _FeatureCollector(sequence)
    features = _json_expect(item.get("features", []), list, "'features'", path, accession)
    for index, feature in enumerate(features):
        where = f"features[{index}]"
        _add_json_feature(collector, _json_expect(feature, dict, where, path, accession), where, path, accession)
    name = item.get("uniProtkbId")
    return UniProtEntry(
        accession,
        name.strip() if isinstance(name, str) else "",
        sequence,
        tuple(collector.features),
        tuple(collector.dropped),
    )


def _add_json_feature(collector: _FeatureCollector, feature: dict, where: str, path: Path, accession: str) -> None:
    rest_type = _json_expect(feature.get("type"), str, f"{where}.type", path, accession)
    ftype = JSON_FEATURE_KEYS.get(rest_type, rest_type)
    location = feature.get("location")
    if location is None:
        collector.add(ftype, None, None, "?")
        return
    location = _json_expect(location, dict, f"{where}.location", path, accession)
    start = _json_position(location.get("start"), f"{where}.location.start", path, accession)
    end = _json_position(location.get("end"), f"{where}.location.end", path, accession)
    isoform = location.get("sequence")  # e.g. "P00519-2": the feature is on that isoform's sequence
    ligand = feature.get("ligand")
    ligand_name = ligand.get("name") if isinstance(ligand, dict) else None
    collector.add(
        ftype,
        start,
        end,
        _location_text(start, end),
        isoform=str(isoform) if isoform else None,
        description=_json_expect(feature.get("description") or "", str, f"{where}.description", path, accession),
        ligand=ligand_name.strip() if isinstance(ligand_name, str) else "",
        evidence=_json_evidence(feature.get("evidences")),
    )


def _json_position(position: object, what: str, path: Path, accession: str) -> int | None:
    """The 1-based position; ``None`` when UniProt marks it unknown.

    ``OUTSIDE`` (``<1`` / ``>120``) and ``UNSURE`` (``?41``) keep their number, as in flat text.
    """
    if position is None:
        return None
    position = _json_expect(position, dict, what, path, accession)
    if position.get("modifier") == "UNKNOWN" or position.get("value") is None:
        return None
    value = position["value"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InterPLMError(f"{what}: bad feature position {value!r}", file=path, record=accession)
    return value


def _json_evidence(evidences: object) -> str:
    """Evidences as the flat file writes them: ``ECO:0000269|PubMed:1998498, ECO:0000303|Ref.13, ECO:0000305``."""
    if not isinstance(evidences, list):
        return ""
    parts = []
    for evidence in evidences:
        if not isinstance(evidence, dict) or not evidence.get("evidenceCode"):
            continue
        source, ident = evidence.get("source"), evidence.get("id")
        if not ident:
            parts.append(str(evidence["evidenceCode"]))
        else:  # a citation of the entry itself is written without its source: "Ref.13"
            parts.append(f"{evidence['evidenceCode']}|{ident if source == 'Reference' else f'{source}:{ident}'}")
    return ", ".join(parts)


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

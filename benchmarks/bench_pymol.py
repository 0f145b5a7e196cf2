"""Interactive latency: ``interplm color`` in PyMOL (cold and warm) and feature-database queries.

- ``interplm color OBJ, feature=N`` typed in headless PyMOL (``cmd.do``, after
  ``import interplm_plugins.pymol_plugin`` registers the command) on a real 732-residue AlphaFold
  model (HSP90, P07900_AF.pdb), with a pipeline of the embedded demo's shapes: ESM-2 4 layers x
  256 dims (random weights), a normalised ReLU SAE of 2,048 features on layer 3, and its feature
  database over real Swiss-Prot proteins with concept matches (``core.database.from_pipeline.build_database``).
  *cold*: a new PyMOL session's first colouring, including loading the pipeline (model, SAE,
  database) and embedding the protein; measured once with an empty activation cache and once
  with the on-disk cache a previous session left; *warm*: recolouring by other features (the
  activations are cached in memory), median and 95th percentile of 30.
- Database queries (``FeatureDatabase.top_examples``, ``features_for_concept``,
  ``features_active_at``), median and 95th percentile of 200 calls each, on the demo database when
  it is installed (src/interplm_plugins/data/demo/features.sqlite), else on the one built here.

Targets: warm colouring < 0.2 s; each query < 10 ms.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

STRUCTURE = "P07900_AF.pdb"
DEMO_DB = _common.REPO / "src" / "interplm_plugins" / "data" / "demo" / "features.sqlite"


def build_pipeline(args, work: Path) -> dict[str, str]:
    import torch

    from interplm_plugins.core.concepts import ConceptHalves, build_concept_labels, split_into_halves
    from interplm_plugins.core.database.from_pipeline import build_database
    from interplm_plugins.core.inputs.homology import cluster_sequences
    from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta
    from interplm_plugins.core.inputs.uniprot import read_uniprot
    from interplm_plugins.core.interpret.pipeline import load_pipeline
    from interplm_plugins.core.plm.embed import embed_to_store
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint
    from interplm_plugins.core.sae.files import save_sae
    from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
    from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae

    model_path = save_esm2_checkpoint(new_esm2(4, 256, 16, seed=0), work / "esm2_t4_demo_shape.pt")
    plm = load_plm(model_path)
    records = [r for r in read_fasta(args.data / "sequences" / "swissprot_train.fasta") if len(r.sequence) <= 800][: args.db_proteins]
    store = embed_to_store(plm, records[:10] if args.quick else records[:30], 3, work / "emb")[3]
    config = SAEConfig(d_in=256, d_hidden=args.features, kind="relu", plm=plm.name, plm_identity=plm.identity, plm_layer=3)
    sae = SparseAutoencoder(config, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # features that fire on part of the residues, as a trained SAE's do
        sae.encoder.weight.mul_(20.0)
        sae.encoder.bias.fill_(-0.5)
    sae_path = save_sae(normalize_sae(sae, feature_max_activations(sae, store)), work / "sae.safetensors")
    ids = {r.id for r in records}
    entries = [e for e in read_uniprot(args.data / "uniprot" / "swissprot_train.dat.gz") if e.accession in ids]
    labels = build_concept_labels(entries, min_instances=3, min_proteins=2)
    # Halves of whole sequence clusters, as `interplm concepts` makes them (the Python clustering: the database is what is timed).
    clusters = cluster_sequences([ProteinRecord(e.accession, e.sequence) for e in entries], mmseqs="")
    halves = ConceptHalves.from_splits(split_into_halves(labels, clusters))
    db = build_database(load_pipeline(model_path, sae_path), records, work / "features.sqlite", halves=halves, progress=False)
    return {"model": str(model_path), "sae": str(sae_path), "database": str(db)}


def child(spec: dict) -> dict:
    """One PyMOL session: load the pipeline, colour cold, recolour warm; database queries."""
    start = time.perf_counter()
    from pymol import cmd

    import interplm_plugins.pymol_plugin  # noqa: F401  (registers the `interplm` command)
    from interplm_plugins.core.database.schema import FeatureDatabase
    from interplm_plugins.session import use_pipeline

    imported = time.perf_counter()
    cmd.reinitialize()
    cmd.load(spec["structure"], "hsp90")
    loaded = time.perf_counter()
    pipeline = use_pipeline(model=spec["model"], sae=spec["sae"], database=spec["database"])
    ready = time.perf_counter()
    rng = np.random.default_rng(0)
    features = rng.choice(pipeline.num_features, size=31, replace=False).tolist()
    cmd.do(f"interplm color hsp90, feature={features[0]}")
    cold = time.perf_counter()
    warm = []
    for feature in features[1 : 6 if spec.get("quick") else None]:
        t = time.perf_counter()
        cmd.do(f"interplm color hsp90, feature={feature}")
        warm.append(time.perf_counter() - t)
    bfactors: list[float] = []
    cmd.iterate("hsp90 and name CA", "bfactors.append(b)", space={"bfactors": bfactors})
    result = {
        "residues": len(bfactors),
        "import_s": imported - start,
        "pipeline_load_s": ready - loaded,
        "first_color_s": cold - ready,
        "cold_s": cold - loaded,
        "warm_median_s": float(np.median(warm)),
        "warm_p95_s": float(np.percentile(warm, 95)),
        "colored_residues_with_values": int(sum(b > 0 for b in bfactors)),
        "max_bfactor": float(max(bfactors)),  # activations in [0, 1] replaced the file's pLDDT (up to 100)
    }
    db = FeatureDatabase(spec["query_database"])
    sequence = "".join(r for r in spec["sequence"])
    acts = pipeline.activations(sequence) if db.num_features == pipeline.num_features else np.random.default_rng(1).random((len(sequence), db.num_features), dtype=np.float32)
    concepts = db.concept_names() or ["Helix"]
    result["concepts"] = len(db.concept_names())
    queries = {
        "top_examples": lambda i: db.top_examples(i % db.num_features, 10),
        "features_for_concept": lambda i: db.features_for_concept(concepts[i % len(concepts)], 10),
        "features_active_at": lambda i: db.features_active_at(acts, range(i % 400, i % 400 + 12), 10),
    }
    for name, query in queries.items():
        query(0)
        times, found = [], 0
        for i in range(20 if spec.get("quick") else 200):
            t = time.perf_counter()
            found += len(query(i))
            times.append(time.perf_counter() - t)
        result[f"{name}_results_per_call"] = found / len(times)
        result[f"{name}_median_ms"] = 1e3 * float(np.median(times))
        result[f"{name}_p95_ms"] = 1e3 * float(np.percentile(times, 95))
    return result


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=2048, help="SAE width (default 2048, the demo's)")
    p.add_argument("--db-proteins", type=int, default=120, help="Swiss-Prot proteins in the built database (default 120)")
    p.add_argument("--child", help="(internal) run one PyMOL session from this JSON spec")
    args = p.parse_args(argv)
    if _common.child_mode(args, child):
        return 0
    if args.quick:
        args.db_proteins, args.features = 30, 512

    from interplm_plugins.core.inputs.structure import chain_sequence, read_structure

    with _common.Workdir(args.workdir) as work:
        spec = build_pipeline(args, work)
        structure = args.data / "structures" / STRUCTURE
        chain = read_structure(structure)[0]
        spec.update(structure=str(structure), sequence=chain_sequence(chain), quick=args.quick,
                    query_database=str(DEMO_DB if DEMO_DB.is_file() else spec["database"]))  # fmt: skip
        sessions = []
        env = {**os.environ, "INTERPLM_CACHE_DIR": str(work / "cache"), "QT_QPA_PLATFORM": "offscreen"}
        for label in ("empty activation cache", "on-disk activation cache")[: 1 if args.quick else 2]:
            sessions.append({"session": label, **_common.run_child(__file__, spec, env=env)})
    first, second = sessions[0], sessions[-1]
    rows = [
        {"measure": "interplm color, cold (new session: pipeline load + embed + colour)", "value": first["cold_s"], "unit": "s", "target": ""},
        {"measure": "  of which pipeline load (model, SAE, database)", "value": first["pipeline_load_s"], "unit": "s", "target": ""},
        {"measure": "interplm color, cold with the on-disk activation cache", "value": second["cold_s"], "unit": "s", "target": ""},
        {"measure": "interplm color, warm (median)", "value": first["warm_median_s"], "unit": "s", "target": "< 0.2"},
        {"measure": "interplm color, warm (95th percentile)", "value": first["warm_p95_s"], "unit": "s", "target": "< 0.2"},
    ]  # fmt: skip
    for name in ("top_examples", "features_for_concept", "features_active_at"):
        rows.append({"measure": f"FeatureDatabase.{name} (median; {second[f'{name}_results_per_call']:.1f} results per call)",
                     "value": second[f"{name}_median_ms"], "unit": "ms", "target": "< 10"})
        rows.append({"measure": f"FeatureDatabase.{name} (95th percentile)", "value": second[f"{name}_p95_ms"], "unit": "ms", "target": "< 10"})
    _common.print_table(f"PyMOL colouring of {STRUCTURE} ({first['residues']} residues) and database queries "
                        f"({'demo database' if DEMO_DB.is_file() else 'database built here'})", rows, ["measure", "value", "unit", "target"])  # fmt: skip
    _common.write_result(args, "pymol", {
        "target": "warm colour < 0.2 s; queries < 10 ms",
        "structure": STRUCTURE, "residues": first["residues"], "sae_features": args.features,
        "query_database": "demo" if DEMO_DB.is_file() else "built", "concepts_in_database": second["concepts"],
        "rows": rows, "sessions": sessions,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

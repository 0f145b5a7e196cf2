"""Builds the binary half of the bad-input corpus (SAE files, embedding stores, fair-esm checkpoints,
feature databases): files that are easier to make than to keep in git, and the pickles whose
``__reduce__`` writes a marker file, which must name a path chosen at test time.

``python tests/bad_inputs/generate.py OUT_DIR`` writes them for poking at by hand (the marker
path is ``OUT_DIR/PWNED``; if that file ever appears, something unpickled a malicious file).
The test suite calls :func:`build_all` into a temporary folder. Everything is deterministic and
small (a few KiB each): an 8 -> 16 SAE, a 1-layer 8-dimensional ESM-2.
"""

from __future__ import annotations

import argparse
import builtins
import gzip
import json
import pickle
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np

MARKER_NAME = "PWNED"


class Exploit:
    """Unpickling this runs ``exec``: it writes ``path``. Loading it must be refused, never run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').write('code ran while loading a file')",)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------- large or compressed text


def _corrupt_gzip(text: str) -> bytes:
    """A gzip header followed by a deflate stream that is not one (zlib.error, not OSError)."""
    return gzip.compress(text.encode())[:10] + b"\xff" * 64


def build_text(out: Path, marker: Path) -> None:
    from interplm_plugins.core.inputs.sequences import MAX_SEQUENCE_LENGTH

    fasta, uniprot, structure = out / "fasta", out / "uniprot", out / "structure"
    for folder in (fasta, uniprot, structure):
        folder.mkdir(parents=True, exist_ok=True)
    record = ">P1 demo\n" + "MKTAYIAKQR" * 20 + "\n"
    (fasta / "huge_sequence.fasta").write_text(">P1 too long\n" + "A" * (MAX_SEQUENCE_LENGTH + 1) + "\n")
    (fasta / "corrupt.fasta.gz").write_bytes(_corrupt_gzip(record))
    many = "".join(f">P{i}\n" + "MKTAYIAKQR" * 20 + "\n" for i in range(50))
    (fasta / "truncated.fasta.gz").write_bytes(gzip.compress(many.encode())[:60])
    (fasta / "not_gzip.fasta.gz").write_text(record)
    (fasta / "good.fasta.gz").write_bytes(gzip.compress(record.encode()))
    seq = "MKTAYIAKQR" * 14_000  # 140,000 letters: beyond csv's 131,072-character cell limit
    (uniprot / "huge_cell.tsv").write_text(f"Entry\tLength\tSequence\nQ00001\t{len(seq)}\t{seq}\n")
    (uniprot / "corrupt.dat.gz").write_bytes(_corrupt_gzip("ID   X\n"))
    (uniprot / "truncated.xml.gz").write_bytes(gzip.compress(b"<uniprot>" + b"<entry></entry>" * 200)[:40])
    (structure / "corrupt.pdb.gz").write_bytes(_corrupt_gzip("ATOM\n"))


# ---------------------------------------------------------------------------------------- SAE


def _sae(d_in: int = 8, d_hidden: int = 16):
    import torch

    from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder

    return SparseAutoencoder(SAEConfig(d_in=d_in, d_hidden=d_hidden), generator=torch.Generator().manual_seed(0)).eval()


def _save_sae_with_config(state: dict, config: dict | str, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(config if isinstance(config, str) else json.dumps(config))


def build_sae(out: Path, marker: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from interplm_plugins.core.sae.files import save_sae

    out.mkdir(parents=True, exist_ok=True)
    sae = _sae()
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    config = sae.config.to_dict()

    save_sae(sae, out / "good.safetensors")
    # recovery: an InterPLM / dictionary_learning ae.pt (no activation_scale, no config)
    torch.save({k: state[k] for k in ("bias", "encoder.weight", "encoder.bias", "decoder.weight")}, out / "interplm_ae.pt")
    # recovery: no JSON beside the weights, but save_sae also put the config in the file's metadata
    save_sae(sae, out / "config_only_in_metadata.safetensors")
    (out / "config_only_in_metadata.json").unlink()

    wrong = dict(state, **{"encoder.weight": torch.zeros(16, 4)})
    _save_sae_with_config(wrong, config, out / "wrong_shape.safetensors")
    _save_sae_with_config(state, {**config, "d_hidden": 32}, out / "config_lies_about_width.safetensors")
    _save_sae_with_config(state, {**config, "d_in": 4}, out / "config_lies_about_input.safetensors")
    _save_sae_with_config(state, '{"format": "interplm-plugins-sae/1", "d_in": 8, "d_hid', out / "config_not_json.safetensors")
    _save_sae_with_config(state, {**config, "d_in": "8"}, out / "config_width_is_text.safetensors")
    _save_sae_with_config(state, {**config, "l1_coefficient": "lots"}, out / "config_l1_is_text.safetensors")
    _save_sae_with_config(state, {**config, "kind": "gated"}, out / "config_unknown_kind.safetensors")
    _save_sae_with_config(state, {**config, "kind": "topk", "k": None}, out / "config_topk_without_k.safetensors")
    _save_sae_with_config(state, {**config, "normalized": "yes"}, out / "config_normalized_is_text.safetensors")
    _save_sae_with_config(state, {**config, "plm_layer": "last"}, out / "config_layer_is_text.safetensors")
    _save_sae_with_config(state, "[8, 16]", out / "config_is_a_list.safetensors")
    _save_sae_with_config(state, {k: v for k, v in config.items() if k != "format"}, out / "config_without_format.safetensors")
    _save_sae_with_config(state, {**config, "secret_option": 1}, out / "config_unknown_field.safetensors")
    save_file(state, str(out / "no_config.safetensors"))
    _save_sae_with_config({k: v for k, v in state.items() if k != "decoder.weight"}, config, out / "missing_tensor.safetensors")
    nan = dict(state, **{"encoder.bias": torch.full((16,), float("nan"))})
    _save_sae_with_config(nan, config, out / "nan_weights.safetensors")
    ints = dict(state, **{"encoder.weight": torch.zeros(16, 8, dtype=torch.int32)})
    _save_sae_with_config(ints, config, out / "integer_weights.safetensors")

    save_sae(sae, out / "truncated.safetensors")
    _truncate(out / "truncated.safetensors", 0.6)
    save_sae(sae, out / "header_length_lies.safetensors")
    data = bytearray((out / "header_length_lies.safetensors").read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    (out / "header_length_lies.safetensors").write_bytes(bytes(data))
    (out / "empty.safetensors").write_bytes(b"")
    shutil.copy(out / "good.json", out / "empty.json")

    # InterPLM-style ae.pt files, read with torch.load(weights_only=True)
    ae = {"bias": state["bias"], "encoder.weight": state["encoder.weight"], "encoder.bias": state["encoder.bias"],
          "decoder.weight": state["decoder.weight"]}  # fmt: skip
    (out / "pickle_exploit.pt").write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    torch.save({**ae, "extra": Exploit(marker)}, out / "pickle_exploit_in_state_dict.pt")
    (out / "pickle_exploit_named.safetensors").write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    torch.save(ae, out / "truncated_ae.pt")
    _truncate(out / "truncated_ae.pt", 0.5)
    torch.save(state["encoder.weight"], out / "tensor_not_state_dict.pt")
    torch.save({**ae, "decoder.weight": torch.zeros(8, 8)}, out / "ae_wrong_shapes.pt")
    torch.save({**ae, "encoder.weight": torch.zeros(16)}, out / "ae_encoder_not_2d.pt")
    torch.save({**ae, "activation_rescale_factor": torch.zeros(16)}, out / "ae_zero_rescale.pt")
    torch.save({**ae, "k": torch.tensor(99)}, out / "ae_k_above_width.pt")
    (out / "empty.pt").write_bytes(b"")


# ------------------------------------------------------------------------------ embedding store


def _store(folder: Path, proteins: dict[str, int], dim: int = 8, rows_per_shard: int = 2, **index_changes) -> Path:
    """A store of ``proteins`` (id -> length) in the format core.plm.embed writes, with ``index_changes`` applied."""
    from interplm_plugins.core.plm.store import STORE_FORMAT, STORE_INDEX

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards, items = [], list(proteins.items())
    for s in range(0, len(items), rows_per_shard):
        group = items[s : s + rows_per_shard]
        name = f"shard_{len(shards):05d}.npy"
        np.save(folder / name, rng.standard_normal((sum(n for _, n in group), dim)).astype(np.float32))
        shards.append({"file": name, "rows": sum(n for _, n in group), "proteins": [p for p, _ in group], "lengths": [n for _, n in group]})
    index = {"format": STORE_FORMAT, "metadata": {"plm": "esm2_test", "plm_identity": "x", "layer": 1, "dim": dim,
             "dtype": "float32"}, "complete": True, "shards": shards}  # fmt: skip
    for key, value in index_changes.items():
        if value is None:
            index.pop(key, None)
        else:
            index[key] = value
    (folder / STORE_INDEX).write_text(json.dumps(index))
    return folder


def build_stores(out: Path, marker: Path) -> None:
    proteins = {"P1": 5, "P2": 3, "P3": 4}
    _store(out / "good", proteins)
    _truncate(_store(out / "truncated_shard", proteins) / "shard_00000.npy", 0.5)
    _truncate(_store(out / "index_cut_short", proteins) / "store.json", 0.6)
    (_store(out / "index_not_json", proteins) / "store.json").write_text("shards: [shard_00000.npy]\n")
    (_store(out / "index_empty", proteins) / "store.json").write_bytes(b"")
    (_store(out / "index_is_a_list", proteins) / "store.json").write_text("[]")
    (_store(out / "index_not_utf8", proteins) / "store.json").write_bytes(b'{"format": "\xff\xfe"}')
    _store(out / "index_other_format", proteins, format="someone-elses-store/3")
    _store(out / "index_without_metadata", proteins, metadata=None)
    _store(out / "index_without_shards", proteins, shards=None)
    _store(out / "index_dim_is_text", proteins, metadata={"dim": "eight", "layer": 1, "dtype": "float32"})
    _store(out / "index_shards_not_a_list", proteins, shards={"file": "shard_00000.npy"})
    _store(out / "index_lengths_disagree_with_rows", proteins, shards=[
        {"file": "shard_00000.npy", "rows": 8, "proteins": ["P1", "P2"], "lengths": [5, 4]}])
    _store(out / "index_proteins_without_lengths", proteins, shards=[
        {"file": "shard_00000.npy", "rows": 8, "proteins": ["P1", "P2"], "lengths": [8]}])
    _store(out / "index_negative_length", proteins, shards=[
        {"file": "shard_00000.npy", "rows": 8, "proteins": ["P1", "P2"], "lengths": [10, -2]}])
    _store(out / "index_duplicate_protein", {"P1": 5, "P2": 3}, rows_per_shard=1, shards=[
        {"file": "shard_00000.npy", "rows": 5, "proteins": ["P1"], "lengths": [5]},
        {"file": "shard_00001.npy", "rows": 3, "proteins": ["P1"], "lengths": [3]}])
    _store(out / "index_path_escapes_store", proteins, shards=[
        {"file": "../good/shard_00000.npy", "rows": 8, "proteins": ["P1", "P2"], "lengths": [5, 3]}])
    (_store(out / "missing_shard", proteins) / "shard_00001.npy").unlink()
    np.save(_store(out / "shard_wrong_width", proteins) / "shard_00000.npy", np.zeros((8, 6), np.float32))
    (_store(out / "shard_not_npy", proteins) / "shard_00000.npy").write_text("not an array\n")
    folder = _store(out / "shard_pickled_objects", proteins)
    np.save(folder / "shard_00000.npy", np.array([Exploit(marker)] * 8, dtype=object), allow_pickle=True)
    (out / "not_a_store").mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- fair-esm checkpoints


def build_plms(out: Path, marker: Path) -> None:
    import argparse as ap

    import torch

    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    good = save_esm2_checkpoint(new_esm2(1, 8, 2, seed=0), out / "esm2_t1_good.pt")
    data = torch.load(good, weights_only=True)

    shutil.copy(good, out / "esm2_truncated.pt")
    _truncate(out / "esm2_truncated.pt", 0.5)
    (out / "esm2_empty.pt").write_bytes(b"")
    (out / "esm2_pickle_exploit.pt").write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    torch.save({"cfg": {"model": Exploit(marker)}, "model": data["model"]}, out / "esm2_pickle_exploit_in_cfg.pt")
    torch.save([1, 2, 3], out / "esm2_list.pt")
    torch.save({"model": data["model"]}, out / "esm2_without_cfg.pt")
    torch.save({"args": ap.Namespace(arch="roberta_large"), "model": data["model"]}, out / "esm1b_style.pt")
    cfg = vars(data["cfg"]["model"])
    torch.save({"cfg": {"model": ap.Namespace(**{**cfg, "encoder_embed_dim": 16})}, "model": data["model"]}, out / "esm2_wrong_width.pt")
    torch.save({"cfg": {"model": ap.Namespace(**{**cfg, "encoder_layers": 3})}, "model": data["model"]}, out / "esm2_missing_layers.pt")
    torch.save({"cfg": {"model": dict(cfg)}, "model": data["model"]}, out / "esm2_cfg_is_dict.pt")
    torch.save({"cfg": "esm2", "model": data["model"]}, out / "esm2_cfg_is_text.pt")
    torch.save({"cfg": {"model": ap.Namespace(**{k: v for k, v in cfg.items() if k != "encoder_layers"})}, "model": data["model"]},
               out / "esm2_cfg_lacks_layers.pt")  # fmt: skip
    nan = {k: (torch.full_like(v, float("nan")) if k.endswith("layers.0.fc1.weight") else v) for k, v in data["model"].items()}
    torch.save({"cfg": data["cfg"], "model": nan}, out / "esm2_nan_weights.pt")
    # a good checkpoint whose contact-regression file beside it is broken
    folder = out / "broken_regression"
    folder.mkdir(exist_ok=True)
    save_esm2_checkpoint(new_esm2(1, 8, 2, seed=0), folder / "esm2_t1_regression.pt")
    (folder / "esm2_t1_regression-contact-regression.pt").write_bytes(pickle.dumps(Exploit(marker), protocol=2))


# ----------------------------------------------------------------------------- feature databases


def build_databases(out: Path, marker: Path) -> None:
    from interplm_plugins.core.database.build import build_feature_database

    out.mkdir(parents=True, exist_ok=True)
    acts = np.array([[0, 0.5], [1.0, 0], [0.25, 0.75]], np.float32)
    good = build_feature_database(out / "good.sqlite", [(("P1", "MKT"), acts), (("P2", "GSH"), acts[::-1])],
                                  provenance={"plm": "esm2_test"}, progress=False)  # fmt: skip

    def variant(name: str, *sql: str) -> Path:
        path = out / name
        shutil.copy(good, path)
        con = sqlite3.connect(path)
        for statement in sql:
            con.execute(statement)
        con.commit()
        con.close()
        return path

    variant("user_version_0.sqlite", "PRAGMA user_version = 0")
    variant("newer_schema.sqlite", "PRAGMA user_version = 99")
    variant("missing_tables.sqlite", "DROP TABLE examples", "DROP TABLE concept_matches")
    variant("missing_meta_table.sqlite", "DROP TABLE meta")
    variant("meta_not_json.sqlite", "UPDATE meta SET value = 'esm2 (the small one)' WHERE key = 'plm'")
    variant("examples_blob_not_zlib.sqlite", "UPDATE examples SET activations = x'00ff00ff'")

    empty_app = out / "user_version_0_no_tables.sqlite"  # what an older build / another tool leaves
    con = sqlite3.connect(empty_app)
    con.execute("PRAGMA application_id = 1229999181")  # the IPLM id, user_version 0, nothing else
    con.commit()
    con.close()

    other = out / "other_application.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    con.execute("INSERT INTO moz_places (url) VALUES ('https://example.org')")
    con.commit()
    con.close()

    (out / "not_sqlite.sqlite").write_text("feature,concept,f1\n0,Helix,0.9\n")
    (out / "empty.sqlite").write_bytes(b"")
    shutil.copy(good, out / "truncated.sqlite")
    _truncate(out / "truncated.sqlite", 0.5)
    data = bytearray(good.read_bytes())
    data[100:] = bytes(len(data) - 100)  # header intact, every page zeroed
    (out / "zeroed_pages.sqlite").write_bytes(bytes(data))
    (out / "pickle.sqlite").write_bytes(pickle.dumps(Exploit(marker), protocol=2))


BUILDERS = {"text": build_text, "sae": build_sae, "store": build_stores, "plm": build_plms, "db": build_databases}


def build_all(dest: str | Path, marker: str | Path | None = None) -> Path:
    """Write every generated input under ``dest/<kind>/``; returns ``dest``."""
    dest = Path(dest)
    marker = Path(marker) if marker is not None else dest / MARKER_NAME
    for kind, build in BUILDERS.items():
        build(dest if kind == "text" else dest / kind, marker)
    return dest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write the generated inputs into")
    out = Path(parser.parse_args().out)
    build_all(out)
    print(f"wrote {sum(1 for _ in out.rglob('*') if _.is_file())} files under {out}", file=sys.stderr)

"""Replace one layer's representation inside a fair-esm ESM-2 forward pass (SAE splicing, ablation, steering).

Layer numbering follows fair-esm's ``repr_layers``: 0 is the scaled token embedding, ``i`` in
``1..num_layers`` the output of transformer block ``i``. fair-esm reports the *last* layer after
its final layer norm (``emb_layer_norm_after``), and embeddings stores (and so SAEs) use that
representation; so for ``layer == num_layers`` the hook replaces the output of
``emb_layer_norm_after`` (what the LM head reads), for earlier layers the output of
``model.layers[layer - 1]``, and for layer 0 the input of the first block. In every case ``fn``
receives and returns the ``(T, B, E)`` tensor that ``repr_layers`` would report (transposed).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from interplm_plugins.errors import InterPLMError

LayerFn = Callable[[torch.Tensor], torch.Tensor]


def _checked(fn: LayerFn, x: torch.Tensor) -> torch.Tensor:
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InterPLMError(f"layer replacement returned {got}, expected a tensor of shape {tuple(x.shape)}")
    return out.to(x.dtype)


@contextlib.contextmanager
def replace_layer_output(plm, layer: int, fn: LayerFn) -> Iterator[None]:
    """Within the block, every forward pass of ``plm.model`` uses ``fn(x)`` instead of layer ``layer``'s
    representation ``x`` of shape ``(T, B, E)`` (tokens, batch, embedding; BOS/EOS/padding included)."""
    model = plm.model
    layer = plm.check_layer(layer)
    if layer == 0:

        def pre_hook(module, args):
            return (_checked(fn, args[0]), *args[1:])

        handle = model.layers[0].register_forward_pre_hook(pre_hook)
    elif layer == plm.num_layers:
        handle = model.emb_layer_norm_after.register_forward_hook(lambda module, args, out: _checked(fn, out))
    else:

        def block_hook(module, args, out):
            x, attn = out  # fair-esm's TransformerLayer returns (x, attention weights)
            return _checked(fn, x), attn

        handle = model.layers[layer - 1].register_forward_hook(block_hook)
    try:
        yield
    finally:
        handle.remove()

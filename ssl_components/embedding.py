"""Embeddings of decoded images with a frozen encoder, and cosine nearest neighbours. Pure torch/numpy.

The encoder's input is what training gave it: the uint8 store scaled to [-1, 1] by `backbones.normalize`.
`encode_uint8` runs no train/eval switch on the encoder (a `torch.export` graph, as loaded from the registry,
is fixed in inference mode and refuses `.eval()`), so an eager encoder must already be in eval mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# rows of the index scored at once in `cosine_top_k`: bounds the temporary float copies to ~64 MB at D=256
_CHUNK_ROWS = 65536


def encode_uint8(encoder, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Features (B, D) float32 on the CPU of uint8 images (B, C, H, W), in one forward pass."""
    import torch  # here, not at the top: `cosine_top_k` alone needs only numpy (and starts in a fraction of the time)

    from ssl_components.backbones import normalize

    if isinstance(images, np.ndarray) and not images.flags.writeable:  # torch warns on read-only arrays (PIL's)
        images = images.copy()
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    with torch.inference_mode():
        out = encoder(normalize(x.to(device)))
    return out.float().cpu().numpy()


def cosine_top_k(query: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `vectors` (N, D) most cosine-similar to `query` (D,), best first: (indices, similarities).

    Ties keep index order; a zero vector has similarity 0 to everything."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != query.shape[0]:
        raise ValueError(f"query has {query.shape[0]} dimensions but the vectors are {vectors.shape}")
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    sims = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), _CHUNK_ROWS):
        chunk = vectors[start : start + _CHUNK_ROWS]
        norms = np.maximum(np.linalg.norm(chunk, axis=1), 1e-12)
        sims[start : start + len(chunk)] = (chunk @ q) / norms
    best = np.argsort(-sims, kind="stable")[: max(k, 0)]  # stable: equal similarities stay in index order
    return best.astype(np.int64), sims[best]

"""The fixed 2-D sin-cos position tables of MAE, computed once in NumPy for both twins."""
from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """(1 + G*G, dim) float32 table; row 1 + i*G + j is patch (row i, column j).

    The first half of each row encodes the column j: the reference builds the grid with
    meshgrid(w, h) and calls that half `emb_h`. Every released checkpoint was trained
    with this layout, so it is kept as it is.
    """
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    table = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)

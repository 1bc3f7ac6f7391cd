"""Storing DFMs: loss maps and masks in an ``.npz`` with a JSON provenance record.

:func:`save_dfms` / :func:`load_dfms` keep the maps of every threshold together, without
pickles (the provenance is a unicode string array inside the archive). The file is written
with a digest record (``<name>.npz.sha256``, :mod:`fslib.artefacts`) and checked against it
when loaded: a truncated or altered file raises :class:`~fslib.artefacts.ArtefactDamaged`
naming it.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, NamedTuple

import numpy as np
import torch

from fslib import artefacts
from fslib.artefacts import ArtefactDamaged
from fslib.dfm.config import _check_top
from fslib.io import to_jsonable


class SavedDFMs(NamedTuple):
    """What :func:`load_dfms` returns."""

    loss_maps: torch.Tensor  # (C, H, W) float64
    dfms: dict  # {top: bool (C, H, W)}
    provenance: dict


def save_dfms(
    path: str | os.PathLike,
    loss_maps: torch.Tensor,
    dfms: Mapping[float, torch.Tensor],
    provenance: dict,
) -> None:
    """Save loss maps and DFMs to ``.npz`` (atomically) with a JSON provenance record.

    Parameters
    ----------
    path : path of the ``.npz``
    loss_maps : Tensor, shape (C, H, W)
    dfms : mapping from threshold (e.g. 0.05) to bool Tensor (C, H, W)
    provenance : dict
        JSON-ready record: model run, images, patch size, ... The thresholds are added.
        Stored inside the archive as a unicode string array, so no pickle is needed.
    """
    if not isinstance(dfms, Mapping):
        raise TypeError(f"dfms must be a mapping {{top: (C, H, W) bool tensor}}, got {type(dfms).__name__}")
    arrays = {"loss_maps": loss_maps.detach().cpu().double().numpy()}
    tops = []
    for top, dfm in dfms.items():
        _check_top(top)
        if dfm.shape != loss_maps.shape:
            raise ValueError(f"DFM for top={top} has shape {tuple(dfm.shape)}, loss maps {tuple(loss_maps.shape)}")
        arrays[f"dfm_{len(tops)}"] = dfm.detach().cpu().bool().numpy()
        tops.append(float(top))
    record = dict(to_jsonable(provenance))
    record["thresholds"] = tops
    arrays["provenance"] = np.array(json.dumps(record, sort_keys=True))
    artefacts.save_npz(path, **arrays)


def load_dfms(path: str | os.PathLike) -> SavedDFMs:
    """Load what :func:`save_dfms` wrote (``allow_pickle=False``), checked against its digest.

    Raises :class:`~fslib.artefacts.ArtefactDamaged` naming the file when it differs from
    the digest written with it or is not a DFM file.
    """
    data = artefacts.load_npz(path)
    try:
        record = json.loads(str(data["provenance"]))
        dfms = {top: torch.from_numpy(data[f"dfm_{i}"]) for i, top in enumerate(record["thresholds"])}
        return SavedDFMs(torch.from_numpy(data["loss_maps"]), dfms, record)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtefactDamaged(path, f"it is not a DFM file written by save_dfms ({type(exc).__name__}: {exc})") from None

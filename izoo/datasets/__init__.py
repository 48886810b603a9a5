"""Source datasets in their official layouts: readers, the shard manifest, and embedded demo data.

``open_source(source_cfg)`` picks the reader by ``format``; every reader takes ``root``, ``splits``,
``on_bad_item`` (``error`` | ``skip``), ``validate`` (``header`` | ``full`` | ``none``, how much the manifest
build checks each file) and ``max_items`` (per split, for quick runs), plus:

============  ==============================================================  =====================================
format        layout under ``root``                                           keys (default)
============  ==============================================================  =====================================
cifar10       ``cifar-10-batches-py/`` (or root itself): ``data_batch_1..5``,  splits ``[train, test]``
              ``test_batch``, ``batches.meta`` (python-2 pickles)
imagenet      ``<split>/<wnid>/*.JPEG``                                        splits ``[train, val]``, ``class_list``
                                                                              (file or list of wnids), ``resize``
                                                                              256, ``crop`` 224
cityscapes    ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +               splits ``[train, val]``, ``size``
              ``gtFine|gtCoarse/<split>/<city>/*_labelIds.png``                ``[320, 640]``, ``labels`` ``fine`` |
                                                                              ``coarse`` | ``[fine, coarse]``
scenes        ``[<split>/][<class>/]<scene>/[render/]transforms*.json`` +      splits ``[train]``, ``size`` 400,
              RGBA images (NeRF-synthetic / OmniObject3D)                      ``train_views`` 96, ``transforms``
                                                                              ``transforms*.json``
folder        ``<split>/<class>/*.png|jpg``                                    splits ``[train, test]``, ``size``
                                                                              (none: one size per split)
============  ==============================================================  =====================================

Item ids: cifar10 ``data_batch_1_00017`` (source id ``data_batch_1#17``); imagenet the file stem; cityscapes
``city_seq_frame`` (label -1); scenes the scene folder name; folder ``split/class/stem``.
"""

from typing import Any

#: public name -> the submodule that defines it; imported on first use, so that reading a manifest
#: (``izoo.datasets.manifest``, e.g. in the Snakefile) does not load the readers and torch
_EXPORTS = {
    **{name: "izoo.datasets.base" for name in ("BadItem", "ItemRef", "Sample", "Scene", "SourceDataset")},
    **{name: "izoo.datasets.manifest" for name in ("ManifestInfo", "build_manifest", "load_manifest", "shard_ids",
                                                    "shard_rows")},
    **{name: "izoo.datasets.registry" for name in ("READERS", "open_source")},
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'izoo.datasets' has no attribute {name!r}")

"""SIREN family of izoo: the model (``model``), the batched fitter (``engine``) and the shard family (``family``).

The ``siren`` family registers itself with ``izoo.fitting.families`` when ``izoo.siren.family`` is imported
(``get_family("siren")`` does that on first use).
"""

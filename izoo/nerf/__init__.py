"""NeRF family of izoo: model, volume rendering, batched fitting with quality control, scene filtering.

The ``nerf`` model family registers itself with ``izoo.fitting.families`` when ``izoo.nerf.family`` is imported
(``get_family("nerf")`` does that on first use).
"""

from izoo.nerf.model import NerfSpec, init_params, query
from izoo.nerf.render import get_rays, query_grid, render_image, render_rays

__all__ = ["NerfSpec", "init_params", "query", "get_rays", "render_rays", "render_image", "query_grid"]

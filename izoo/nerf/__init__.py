"""NeRF family of izoo: model, volume rendering, batched fitting with quality control, scene filtering.

Importing this package registers the ``nerf`` model family with ``izoo.fitting.families``.
"""

from izoo.nerf import family as _family  # noqa: F401  (registers the "nerf" family)
from izoo.nerf.model import NerfSpec, init_params, query
from izoo.nerf.render import get_rays, query_grid, render_image, render_rays

__all__ = ["NerfSpec", "init_params", "query", "get_rays", "render_rays", "render_image", "query_grid"]

"""``izoo filter-scenes`` (the 3D dataset filter) and ``izoo render-nerf`` (an image of an archived NeRF)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from izoo.atomic import atomic_path
from izoo.errors import IzooError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the NeRF sub-commands to the ``izoo`` parser."""
    p = subparsers.add_parser("filter-scenes", help="drop scenes below the PSNR gate and classes with too few scenes",
                              description=cmd_filter_scenes.__doc__)
    p.add_argument("--reports", nargs="+", required=True, help="PSNR report CSVs (any phases; the last phase wins)")
    p.add_argument("--gate", type=float, default=25.0, help="scene PSNR gate in dB (default 25)")
    p.add_argument("--min-per-class", type=int, default=5, help="drop classes with fewer kept scenes (default 5)")
    p.add_argument("--class-column", default="label", help="report column naming the class (default label)")
    p.add_argument("--out-kept", required=True, help="CSV of the scenes kept for the benchmark split")
    p.add_argument("--out-dropped", required=True, help="CSV of the dropped scenes with reason_code and reason")
    p.set_defaults(func=cmd_filter_scenes)

    r = subparsers.add_parser("render-nerf", help="render an archived NeRF from a held-out camera or an orbit pose",
                              description=cmd_render_nerf.__doc__)
    r.add_argument("--archive", required=True, help="NeRF INR file (shard weights or merged archive)")
    r.add_argument("--item", required=True, help="item id, or #N for the N-th item of the file")
    r.add_argument("--view", type=int, default=0, help="archived held-out camera to render (default 0)")
    r.add_argument("--orbit", nargs=3, type=float, metavar=("AZIMUTH", "ELEVATION", "RADIUS"),
                   help="render from an orbit pose (degrees, degrees, scene units) instead of a held-out camera")
    r.add_argument("--size", type=int, default=None, help="output width = height (default: archived size)")
    r.add_argument("--out", required=True, help="output PNG")
    r.set_defaults(func=cmd_render_nerf)


def cmd_filter_scenes(args: argparse.Namespace) -> int:
    """Apply the 3D dataset filter to PSNR reports and write the kept and dropped scene lists."""
    from izoo.nerf.filtering import filter_scenes, read_reports

    kept, dropped = filter_scenes(read_reports(args.reports), gate=args.gate, min_per_class=args.min_per_class,
                                  class_column=args.class_column)
    for frame, path in ((kept, args.out_kept), (dropped, args.out_dropped)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    reasons = dropped["reason_code"].value_counts().to_dict() if len(dropped) else {}
    print(f"kept {len(kept)} scenes in {kept[args.class_column].nunique() if len(kept) else 0} classes; "
          f"dropped {len(dropped)} ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items())) or 'none'})")
    return 0


def cmd_render_nerf(args: argparse.Namespace) -> int:
    """Render one archived NeRF to a PNG (from an archived held-out camera, or an orbit pose)."""
    import math

    from PIL import Image

    from izoo.nerf.archive import open_nerf_archive
    from izoo.nerf.synthetic import look_at_pose

    with open_nerf_archive(args.archive) as arc:
        ids = arc.items["item_id"].astype(str).tolist()
        if args.item.startswith("#"):
            index = int(args.item[1:])
            if not 0 <= index < len(ids):
                raise IzooError(f"item {args.item} out of range (the file has {len(ids)} items)", args.archive,
                                "use #0 .. #N-1 or an item id")
        elif args.item in ids:
            index = ids.index(args.item)
        else:
            raise IzooError(f"no item {args.item!r} in the file", args.archive, "use an item id from its /items table")
        cam = arc.camera(index)
        size = args.size
        if args.orbit:
            az, el, radius = (math.radians(args.orbit[0]), math.radians(args.orbit[1]), args.orbit[2])
            pose = look_at_pose((radius * math.cos(el) * math.cos(az), radius * math.cos(el) * math.sin(az),
                                 radius * math.sin(el)))
        else:
            if not 0 <= args.view < len(cam["poses"]):
                raise IzooError(f"view {args.view} out of range ({len(cam['poses'])} archived cameras)", args.archive,
                                "pick --view from 0 to the number of held-out views - 1, or use --orbit")
            pose = cam["poses"][args.view]
        height = width = size if size else None
        if size is None:
            height, width = cam["height"], cam["width"]
        image = arc.render_pose(index, pose, height, width, cam["focal"] * width / cam["width"])
    out = Path(args.out)
    with atomic_path(out) as tmp:
        Image.fromarray((image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    print(f"wrote {out} ({width}x{height}) of item {ids[index]}")
    return 0

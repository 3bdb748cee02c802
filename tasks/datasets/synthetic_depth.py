"""`synthetic_depth`: ray-cast indoor scenes with the features of TFDS `nyu_depth_v2`.

Each frame is a room (floor, ceiling, back and side walls) with 0-5 axis-aligned boxes and
spheres, seen by a pinhole camera with NYU's intrinsics scaled to the frame size
(fx = fy = 518.86 * W / 640, principal point at the centre) at a jittered height, pitch,
yaw and roll. Surfaces carry textures (checker / plank floors, noise / striped walls) and
Lambertian shading from a point light with hard shadows. Depth is z-depth along the optical
axis in metres, as in NYU, and lies in (0.5, 10) by construction of the room and camera.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from uvim_givt.data.embedded_builder import (
    EmbeddedBuilder,
    EmbeddedConfig,
    encode_png,
    example_rng,
)

NYU_FOCAL_PX = 518.8579  # NYU Depth V2 colour camera fx (fy is 519.47) at 640x480
DEPTH_RANGE = (0.5, 10.0)  # metres, open interval every depth value lies in

_VERSION = tfds.core.Version("1.0.0")
_DESCRIPTION = (
    "Synthetic indoor RGB-D frames rendered by ray casting, with the features of nyu_depth_v2: "
    "image uint8 [H, W, 3] and z-depth float16 [H, W] in metres."
)

# Surface ids of the hit map.
_FLOOR, _CEIL, _LEFT, _RIGHT, _BACK = range(5)
_FIRST_OBJECT = 5


@dataclasses.dataclass(eq=False)
class SyntheticDepthConfig(EmbeddedConfig):
    """Frame size (keep NYU's 3:4 for realism), split sizes and seed."""

    height: int = 60
    width: int = 80


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: roll about z, then pitch about x (positive looks down), then
    yaw about y."""
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_yaw @ r_pitch @ r_roll


def _value_noise(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth noise in [0, 1]: bilinear interpolation of a random lattice, wrapped."""
    n = table.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)  # smoothstep hides the lattice
    i0, j0 = u0.astype(np.int64) % n, v0.astype(np.int64) % n
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    top = table[i0, j0] * (1 - fu) + table[i1, j0] * fu
    bottom = table[i0, j1] * (1 - fu) + table[i1, j1] * fu
    return top * (1 - fv) + bottom * fv


def _safe(d: np.ndarray) -> np.ndarray:
    """Direction components away from zero, so slab divisions stay finite."""
    return np.where(np.abs(d) < 1e-9, 1e-9, d)


def _hit_box(
    origin: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test. Returns entry t (inf where missed) and the entry axis (0..2)."""
    inv = 1.0 / _safe(d)
    t1, t2 = (lo - origin) * inv, (hi - origin) * inv
    t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_enter, t_exit = t_near.max(-1), t_far.min(-1)
    hit = (t_exit >= t_enter) & (t_enter > 1e-6)
    return np.where(hit, t_enter, np.inf), t_near.argmax(-1)


def _hit_sphere(origin: np.ndarray, d: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Nearest positive t of the ray/sphere intersection (inf where missed)."""
    oc = origin - center
    a = (d * d).sum(-1)
    b = 2 * (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - radius * radius
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > 1e-6), t, np.inf)


def _sample_scene(rng: np.random.Generator) -> dict[str, Any]:
    """Room, camera, light and objects. Bounds keep every visible depth inside (0.5, 10)."""
    room_w, room_h, room_d = rng.uniform(3.0, 6.0), rng.uniform(2.4, 3.2), rng.uniform(4.0, 8.0)
    # The camera stands >= 1.2 m from the side walls and looks into the room from z = 0.
    cam = np.array([rng.uniform(-(room_w / 2 - 1.2), room_w / 2 - 1.2), rng.uniform(1.0, 1.8), 0.0])
    rot = _rotation(
        # Positive pitch looks down, as a hand-held or tripod camera usually does.
        np.deg2rad(rng.uniform(-20, 20)),
        np.deg2rad(rng.uniform(-5, 25)),
        np.deg2rad(rng.uniform(-3, 3)),
    )
    objects = []
    for _ in range(int(rng.integers(0, 6))):
        color = rng.uniform(0.15, 0.95, 3)
        if rng.random() < 0.55:
            half = np.array([rng.uniform(0.15, 0.6), 0.0, rng.uniform(0.15, 0.6)])
            height = rng.uniform(0.3, 1.6)
            cx = rng.uniform(-room_w / 2 + half[0], room_w / 2 - half[0])
            cz = rng.uniform(2.0 + half[2], max(2.1 + half[2], room_d - half[2]))
            lo = np.array([cx - half[0], 0.0, cz - half[2]])
            hi = np.array([cx + half[0], height, cz + half[2]])
            objects.append({"kind": "box", "lo": lo, "hi": hi, "color": color})
        else:
            radius = rng.uniform(0.15, 0.5)
            center = np.array(
                [
                    rng.uniform(-room_w / 2 + radius, room_w / 2 - radius),
                    # Mostly resting on the floor, sometimes floating (a lamp, a ball in the air).
                    radius if rng.random() < 0.7 else rng.uniform(radius, room_h - radius),
                    rng.uniform(2.0 + radius, max(2.1 + radius, room_d - radius)),
                ]
            )
            objects.append({"kind": "sphere", "center": center, "radius": radius, "color": color})
    light = np.array(
        [rng.uniform(-room_w / 3, room_w / 3), room_h - 0.15, rng.uniform(0.5, room_d * 0.7)]
    )
    return {
        "room": (room_w, room_h, room_d),
        "cam": cam,
        "rot": rot,
        "objects": objects,
        "light": light,
        "light_power": rng.uniform(0.8, 1.3),
    }


def _cast(
    origin: np.ndarray, d: np.ndarray, objects: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest object hit: (t, object index or -1, normal); t = inf where none is hit."""
    n = d.shape[0]
    t_best = np.full(n, np.inf)
    idx = np.full(n, -1)
    normal = np.zeros((n, 3))
    for k, obj in enumerate(objects):
        if obj["kind"] == "box":
            t, axis = _hit_box(origin, d, obj["lo"], obj["hi"])
            nrm = np.zeros((n, 3))
            nrm[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])
        else:
            t = _hit_sphere(origin, d, obj["center"], obj["radius"])
            nrm = None
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        idx = np.where(closer, k, idx)
        if nrm is None:
            p = origin + d * np.where(np.isfinite(t), t, 0)[:, None]
            nrm = (p - obj["center"]) / obj["radius"]
        normal = np.where(closer[:, None], nrm, normal)
    return t_best, idx, normal


def render_depth_frame(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one frame: (image uint8 [H, W, 3], z-depth float32 [H, W] in metres)."""
    scene = _sample_scene(rng)
    room_w, room_h, room_d = scene["room"]
    focal = NYU_FOCAL_PX * width / 640.0
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    # Camera-frame rays with unit z: the ray parameter t of a hit *is* its z-depth.
    d_cam = np.stack([(u - width / 2) / focal, -(v - height / 2) / focal, np.ones_like(u)], -1)
    d = d_cam.reshape(-1, 3) @ scene["rot"].T
    origin = scene["cam"]

    # The room: the camera is inside an axis-aligned box, so each ray leaves it through the
    # face with the smallest positive exit t. The wall behind the camera (z = -1) is never seen.
    lo, hi = np.array([-room_w / 2, 0.0, -1.0]), np.array([room_w / 2, room_h, room_d])
    d_safe = _safe(d)
    t_exit = np.where(d_safe > 0, (hi - origin) / d_safe, (lo - origin) / d_safe)
    axis = t_exit.argmin(-1)
    t = t_exit[np.arange(len(d)), axis]
    positive = d[np.arange(len(d)), axis] > 0
    surface = np.select(
        [
            (axis == 1) & ~positive,
            (axis == 1) & positive,
            (axis == 0) & ~positive,
            (axis == 0) & positive,
        ],
        [_FLOOR, _CEIL, _LEFT, _RIGHT],
        _BACK,
    )
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = np.where(positive, -1.0, 1.0)  # walls face inwards

    t_obj, obj_idx, obj_normal = _cast(origin, d, scene["objects"])
    in_front = t_obj < t
    t = np.where(in_front, t_obj, t)
    surface = np.where(in_front, _FIRST_OBJECT + obj_idx, surface)
    normal = np.where(in_front[:, None], obj_normal, normal)
    point = origin + d * t[:, None]

    albedo = _albedo(rng, surface, point, scene)
    # Lambertian shading from a point light, with hard shadows cast by the objects only
    # (the light is inside the convex room, so walls never shadow each other).
    to_light = scene["light"] - point
    dist = np.linalg.norm(to_light, axis=-1)
    lambert = np.maximum((normal * to_light).sum(-1) / dist, 0.0)
    t_shadow, _, _ = _cast(point + normal * 1e-4, to_light, scene["objects"])
    lit = lambert * (t_shadow >= 1.0) * scene["light_power"] * 6.0 / (4.0 + dist * dist)
    radiance = albedo * (0.22 + lit)[:, None]
    image = np.clip(radiance, 0, 1) ** (1 / 2.2)  # display gamma
    image = image.reshape(height, width, 3) + rng.normal(0, 0.006, (height, width, 3))
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    depth = t.reshape(height, width).astype(np.float32)
    return image, depth


def _albedo(
    rng: np.random.Generator, surface: np.ndarray, point: np.ndarray, scene: dict[str, Any]
) -> np.ndarray:
    """Per-hit reflectance: textured floor and walls, plain ceiling, noisy solid objects."""
    n = len(surface)
    albedo = np.zeros((n, 3))
    table = rng.random((32, 32))
    x, y, z = point[:, 0], point[:, 1], point[:, 2]

    floor = surface == _FLOOR
    tile = rng.uniform(0.3, 0.8)
    col_a, col_b = rng.uniform(0.45, 0.9, 3), rng.uniform(0.1, 0.5, 3)
    if rng.random() < 0.5:  # checker tiles
        check = (np.floor(x[floor] / tile) + np.floor(z[floor] / tile)) % 2
        albedo[floor] = np.where(check[:, None] > 0, col_a, col_b)
    else:  # planks along z, each plank its own tone, with grain noise
        plank = np.floor(x[floor] / (tile * 0.4))
        tone = _value_noise(table, plank * 7.3, np.zeros_like(plank))
        grain = _value_noise(table, x[floor] * 3, z[floor] * 0.7)
        albedo[floor] = col_a * (0.6 + 0.3 * tone + 0.15 * grain)[:, None]

    walls = (surface == _LEFT) | (surface == _RIGHT) | (surface == _BACK)
    wall_col = rng.uniform(0.45, 0.95, 3)
    # Walls are parameterised by (along-wall, height) coordinates.
    along = np.where(surface == _BACK, x, z)[walls]
    if rng.random() < 0.5:  # stained plaster: smooth noise
        freq = rng.uniform(1.0, 3.0)
        shade = 0.75 + 0.35 * _value_noise(table, along * freq + 11, y[walls] * freq)
    else:  # wallpaper stripes
        period = rng.uniform(0.15, 0.5)
        shade = 0.8 + 0.2 * (np.floor(along / period) % 2)
    albedo[walls] = wall_col * shade[:, None]

    albedo[surface == _CEIL] = rng.uniform(0.8, 0.95)
    for k, obj in enumerate(scene["objects"]):
        hit = surface == _FIRST_OBJECT + k
        speckle = _value_noise(table, x[hit] * 9 + 5 * k, (y[hit] + z[hit]) * 9)
        albedo[hit] = obj["color"] * (0.85 + 0.2 * speckle)[:, None]
    return albedo


class SyntheticDepth(EmbeddedBuilder):
    """Synthetic indoor depth, features as `nyu_depth_v2`."""

    name = "synthetic_depth"
    VERSION = _VERSION
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticDepthConfig(
            name="default", version=_VERSION, description="60x80 frames, 2000/200 examples."
        ),
        SyntheticDepthConfig(
            name="120x160",
            version=_VERSION,
            height=120,
            width=160,
            description="120x160 frames, 2000/200 examples.",
        ),
        SyntheticDepthConfig(
            name="nyu_size",
            version=_VERSION,
            height=480,
            width=640,
            description="480x640 frames (NYU's size), 2000/200 examples; slow to build.",
        ),
        SyntheticDepthConfig(
            name="tiny",
            version=_VERSION,
            num_train=32,
            num_validation=16,
            description="60x80 frames, 32/16 examples, for smoke tests.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        """Features mirror nyu_depth_v2 (image png-encoded, depth float16), at this size."""
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(cfg.height, cfg.width, 3)),
                    "depth": tfds.features.Tensor(shape=(cfg.height, cfg.width), dtype=np.float16),
                }
            ),
            supervised_keys=("image", "depth"),
            homepage="https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html",
        )

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[str, dict]]:
        cfg = self.builder_config
        for index in range(num_examples):
            rng = example_rng(cfg.seed, split, index)
            image, depth = render_depth_frame(rng, cfg.height, cfg.width)
            # Bounded by construction; the clip only guards float16 rounding at the ends.
            depth = np.clip(depth, DEPTH_RANGE[0] + 0.01, DEPTH_RANGE[1] - 0.01)
            yield (
                f"{split}_{index:06d}",
                {
                    "image": encode_png(image),  # PNG, the Image feature's default (as NYU's)
                    "depth": depth.astype(np.float16),
                },
            )

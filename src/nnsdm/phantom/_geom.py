"""The voxel grid of one synthetic case and the shape primitives the anatomy is drawn with.

Anatomy is described in *template millimetres*: an adult-sized patient frame (x towards the patient's
left, y posterior, z superior, as DICOM/SimpleITK's LPS; origin on the midline at the level of the
pancreas body). A case's grid maps each voxel centre to that frame through a fixed scale (so the
anatomy fits the nominal field of view), a rotation about z and a shift. The grid itself is LPS-aligned,
so template x and y depend only on the in-plane index and template z only on the slice index: every
coordinate array is 2D or 1D and 3D values come from broadcasting.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import make_interp_spline


class Canvas:
    """A case's (z, y, x) voxel grid with the tissue, HU and label volumes being painted."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], *,
                 scale: tuple[float, float], yaw: float, centre: tuple[float, float], z_bottom: float,
                 label_step: int = 1):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.s_xy, self.s_z = scale
        self.centre = centre
        self.z_bottom = z_bottom
        self.label_step = label_step  # labels are kept on slices k with k % label_step == label_step // 2
        self.cos, self.sin = math.cos(yaw), math.sin(yaw)
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        u = ((np.arange(nx) - (nx - 1) / 2) * sx)[None, :]
        v = ((np.arange(ny) - (ny - 1) / 2) * sy)[:, None]
        self.X = ((self.cos * u + self.sin * v) / self.s_xy + centre[0]).astype(np.float32)
        self.Y = ((-self.sin * u + self.cos * v) / self.s_xy + centre[1]).astype(np.float32)
        self.Z = (z_bottom + np.arange(nz) * sz / self.s_z).astype(np.float32)
        self.z_top = float(self.Z[-1])
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.tissue = np.zeros(self.shape, np.uint8)
        self.label = np.zeros(self.shape, np.uint8)
        self.texture = np.zeros(self.shape, np.float32)

    @property
    def template_spacing(self) -> tuple[float, float, float]:
        """Voxel size in template millimetres, (z, y, x)."""
        sz, sy, sx = self.spacing
        return sz / self.s_z, sy / self.s_xy, sx / self.s_xy

    def index_of(self, x, y, z):
        """Continuous (k, j, i) voxel index of template points."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        dx = (np.asarray(x, float) - self.centre[0]) * self.s_xy
        dy = (np.asarray(y, float) - self.centre[1]) * self.s_xy
        i = (self.cos * dx - self.sin * dy) / sx + (nx - 1) / 2
        j = (self.sin * dx + self.cos * dy) / sy + (ny - 1) / 2
        k = (np.asarray(z, float) - self.z_bottom) * self.s_z / sz
        return k, j, i

    def box(self, lo, hi, pad: int = 1):
        """Slices of the voxels whose centres may lie in the template box [lo, hi] (x, y, z); None if none."""
        bounds = self.boxes(np.asarray(lo, float)[None], np.asarray(hi, float)[None], pad=pad)[0]
        if (bounds[::2] >= bounds[1::2]).any():
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(bounds[::2], bounds[1::2]))

    def boxes(self, lo: np.ndarray, hi: np.ndarray, pad: int = 1) -> np.ndarray:
        """Index bounds (k0, k1, j0, j1, i0, i1) of many template boxes (n, 3) at once, clipped to the grid."""
        xs = np.stack([lo[:, 0], hi[:, 0], lo[:, 0], hi[:, 0]], axis=1)
        ys = np.stack([lo[:, 1], lo[:, 1], hi[:, 1], hi[:, 1]], axis=1)
        _, j, i = self.index_of(xs, ys, 0.0)
        k, _, _ = self.index_of(0.0, 0.0, np.stack([lo[:, 2], hi[:, 2]], axis=1))
        out = np.empty((len(lo), 6), np.int64)
        for c, (idx, n) in enumerate(zip((k, j, i), self.shape)):
            out[:, 2 * c] = np.clip(np.floor(idx.min(axis=1)).astype(np.int64) - pad, 0, n)
            out[:, 2 * c + 1] = np.clip(np.ceil(idx.max(axis=1)).astype(np.int64) + pad + 1, 0, n)
        return out

    def coords(self, sl=None):
        """Template x, y, z of the voxels in ``sl``, shaped to broadcast to the box: (1, j, i), (1, j, i), (k, 1, 1)."""
        if sl is None:
            sl = (slice(None),) * 3
        return self.X[sl[1], sl[2]][None], self.Y[sl[1], sl[2]][None], self.Z[sl[0]][:, None, None]

    def box_shape(self, sl) -> tuple[int, int, int]:
        return tuple(len(range(*s.indices(n))) for s, n in zip(sl, self.shape))

    def paint(self, sl, mask, tissue: int, hu, *, texture: float = 0.0, label: int | None = None) -> None:
        """Where ``mask``: set tissue, HU (plus ``texture`` x the smooth texture field) and optionally the label."""
        if sl is None:
            return
        mask = np.broadcast_to(mask, self.box_shape(sl))
        if not mask.any():
            return
        hu_view = self.hu[sl]
        value = np.broadcast_to(np.asarray(hu, np.float32), mask.shape)[mask]
        if texture:
            value = value + texture * self.texture[sl][mask]
        hu_view[mask] = value
        self.tissue[sl][mask] = tissue
        if label is not None:
            self.label[sl][mask] = label


def smin(a, b, k: float):
    """Smooth minimum (union of two signed fields) with blending width k."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a, b, k: float):
    """Smooth maximum (intersection of two signed fields)."""
    return -smin(-a, -b, k)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix (radians) about z (yaw), then y (pitch), then x (roll)."""
    cz, sz = math.cos(yaw), math.sin(yaw)
    cy, sy = math.cos(pitch), math.sin(pitch)
    cx, sx = math.cos(roll), math.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def ellipsoid(X, Y, Z, centre, axes, rot: np.ndarray | None = None):
    """Approximate signed distance (mm, negative inside) to an ellipsoid with semi-axes ``axes`` (in its own frame)."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    if rot is not None:  # local = rot^T d
        dx, dy, dz = (rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
                      rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
                      rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz)
    r = np.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    return (r - 1.0) * min(axes)


class Waves:
    """A smooth random field: a sum of plane waves with random directions, wavelengths and phases (unit RMS)."""

    def __init__(self, rng: np.random.Generator, n: int = 6, wavelength: tuple[float, float] = (40.0, 120.0)):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.k = d * (2 * math.pi / rng.uniform(*wavelength, size=n))[:, None]
        self.phase = rng.uniform(0, 2 * math.pi, size=n)
        self.norm = math.sqrt(2.0 / n)

    def __call__(self, X, Y, Z):
        out = 0.0
        for (kx, ky, kz), p in zip(self.k, self.phase):
            a, b = kx * X + ky * Y, kz * Z + p  # sin(a + b) from the in-plane and z parts, cheaper in 3D
            out = out + (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
        return out * self.norm


def curve(points, step: float) -> np.ndarray:
    """Points every ~``step`` mm along a smooth spline through ``points`` (n, 3)."""
    pts = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(np.maximum(seg, 1e-6))])
    spline = make_interp_spline(t, pts, k=min(3, len(pts) - 1))
    fine = spline(np.linspace(0, t[-1], max(2, int(t[-1] / step * 3))))
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(fine, axis=0), axis=1))])
    n = max(2, int(math.ceil(length[-1] / step)) + 1)
    at = np.linspace(0, length[-1], n)
    return np.stack([np.interp(at, length, fine[:, c]) for c in range(3)], axis=1), at / max(length[-1], 1e-6)


def tube(cv: Canvas, points, radii, *, pad: float = 0.0, step: float | None = None):
    """Signed distance (mm) to a tube of varying radius along a spline; returns (slices, field) or (None, None).

    Swept spheres: each sample along the centre line updates the field only in its own small box.
    ``pad`` widens the computed region (for shells drawn outside the tube).
    """
    radii = np.asarray(radii, float)
    if step is None:
        step = max(0.4 * float(radii.min()), 0.5)
    samples, frac = curve(points, step)
    r = np.interp(frac, np.linspace(0, 1, len(radii)), radii)
    reach = r + pad
    sl = cv.box((samples - reach[:, None]).min(0), (samples + reach[:, None]).max(0))
    if sl is None:
        return None, None
    field = np.full(cv.box_shape(sl), np.inf, np.float32)
    origin = np.array([a.start for a in sl])
    stops = np.array([a.stop for a in sl])
    bounds = cv.boxes(samples - reach[:, None], samples + reach[:, None], pad=0)
    lo = np.maximum(bounds[:, ::2], origin)
    hi = np.minimum(bounds[:, 1::2], stops)
    for p, rad, a, b in zip(samples, r, lo, hi):
        if (a >= b).any():
            continue
        X, Y, Z = cv.coords(tuple(slice(u, v) for u, v in zip(a, b)))
        d = np.sqrt((X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2) - rad
        loc = tuple(slice(u, v) for u, v in zip(a - origin, b - origin))
        np.minimum(field[loc], d, out=field[loc])
    return sl, field

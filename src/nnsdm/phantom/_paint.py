"""Paint a sampled anatomy onto a case's Canvas: tissues, Hounsfield units and the FLARE21 labels.

Painting order decides what lies on top: body wall, lower chest, ribs and spine, gut, vessels, then the
organs, so a distractor never cuts into an organ's label except where anatomy says so (the gallbladder
and the inferior vena cava are not liver). Lesions, cysts, tumours and vessels inside an organ keep the
organ's label, as in FLARE21. Nothing here is random: the anatomy was drawn beforehand.
"""

from __future__ import annotations

import math

import edt
import numpy as np
from scipy import ndimage

from nnsdm.labels import FLARE21_DATASET_LABELS
from nnsdm.phantom._anatomy import cavity_radius, diaphragm
from nnsdm.phantom._geom import Canvas, ellipsoid, rotation, smax, smin, tube

TISSUES = (
    "air", "skin", "subcutaneous_fat", "muscle", "visceral_fat", "cortical_bone", "vertebral_body", "disc",
    "csf", "lung", "heart", "aorta", "artery", "vein", "portal_vein", "liver", "liver_lesion", "liver_vessel",
    "gallbladder", "spleen", "kidney_cortex", "kidney_medulla", "kidney_sinus", "kidney_cyst", "kidney_tumour",
    "pancreas", "bowel_wall", "bowel_fluid", "gas", "stool", "oral_contrast", "table", "cartilage", "iliac_bone",
)
T = {name: i for i, name in enumerate(TISSUES)}
LIVER, KIDNEY, SPLEEN, PANCREAS = (FLARE21_DATASET_LABELS[name] for name in ("liver", "kidney", "spleen", "pancreas"))
ALL = (slice(None),) * 3


def draw(cv: Canvas, A: dict, H: dict) -> dict:
    """Paint one case; returns the findings actually visible in its field of view."""
    _body(cv, A, H)
    _spine(cv, A, H)
    for viscus in A["gut"]:
        _viscus(cv, A, H, viscus)
    _pelvis(cv, A, H)
    for path, radii, tissue, hu in A["vessels"]:
        sl, f = tube(cv, path, radii)
        if sl is not None:
            cv.paint(sl, f < 0, T[tissue], H[hu], texture=10)
    findings = _kidneys(cv, A, H)
    _pancreas(cv, A, H)
    _spleen(cv, A, H)
    findings.update(_liver(cv, A, H))
    findings["fatty_liver"] = A["fatty_liver"]
    findings["oral_contrast"] = A["oral_contrast"]
    return findings


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask``."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)


def _connected(cv: Canvas, sl, mask: np.ndarray) -> np.ndarray:
    """``mask`` reduced to one piece, also as seen on the slices that keep labels (no stray label islands)."""
    mask = _largest(mask)
    m = cv.label_step
    off = (m // 2 - sl[0].start) % m
    mask[off::m] = _largest(mask[off::m])
    return mask


def _body(cv: Canvas, A: dict, H: dict) -> None:
    """Table, skin, subcutaneous fat, muscle wall, visceral fat; lungs and heart above the diaphragm; ribs."""
    X2, Y2 = cv.X, cv.Y
    Z = cv.Z[:, None, None]
    theta = np.arctan2(Y2, X2)
    r2 = np.hypot(X2, Y2)
    widen = (1.0 + A["widen"] * np.clip(-cv.Z, -150, 300) / 200.0)[:, None, None]
    s = np.sin(theta)

    def fat_of(s):
        return A["fat"] * (1 + A["fat_ant"] * np.clip(-s, 0, 1)) * (1 - A["fat_post"] * np.clip(s, 0, 1))

    def mus_of(theta):  # thin at the linea alba
        return A["mus"] * (1 - 0.5 * np.exp(-((theta + math.pi / 2) / 0.08) ** 2))

    depth = r2[None] - cavity_radius(A, theta)[None] * widen  # mm outside the cavity outline, along the ray
    wall = mus_of(theta)[None] * widen
    fat3 = fat_of(s)[None] * widen

    # the table under the patient's back: a carbon-fibre shell around foam, curving up, touching the back
    t = np.linspace(0.2, math.pi - 0.2, 721)
    outline = (cavity_radius(A, t) + mus_of(t) + fat_of(np.sin(t))) * float(widen.max()) + A["skin"]
    ty = float(np.max(outline * np.sin(t) + 0.0008 * (outline * np.cos(t)) ** 2)) + A["table_gap"] - 0.0008 * X2 ** 2
    table = (Y2 > ty) & (Y2 < ty + 25) & (np.abs(X2) < 230)
    cv.paint(ALL, table[None], T["table"], -700.0)
    cv.paint(ALL, (table & ((Y2 < ty + 4) | (Y2 > ty + 21)))[None], T["table"], H["table"])
    cv.paint(ALL, depth < wall + fat3 + A["skin"], T["skin"], H["skin"], texture=5)
    cv.paint(ALL, depth < wall + fat3, T["subcutaneous_fat"], H["subcutaneous_fat"], texture=8)
    cv.paint(ALL, depth < wall, T["muscle"], H["muscle"], texture=6)
    cavity = depth < 0
    cv.paint(ALL, cavity, T["visceral_fat"], H["visceral_fat"], texture=10)

    # lower chest: lungs above the diaphragm (vessels as bright specks), heart above its central part
    zd = diaphragm(A, X2, Y2)[None]
    thorax = cavity & (Z > zd + 4)
    if thorax.any():
        cv.paint(ALL, cavity & (Z > zd), T["muscle"], H["muscle"], texture=6)
        cv.paint(ALL, thorax, T["lung"], H["lung"], texture=20)
        cv.paint(ALL, thorax & (cv.texture > 2.0), T["vein"], H["vein"] * 0.5, texture=30)
        hx, hy, htop, _ = A["domes"][2]
        hsl = cv.box((hx - 100, hy - 100, htop - 20), (hx + 100, hy + 100, htop + 140))
        if hsl is not None:
            X, Y, Zh = cv.coords(hsl)
            hc = (hx + 10, hy - 5, htop + 55)
            heart = (ellipsoid(X, Y, Zh, hc, (75, 55, 60)) < 0) & thorax[hsl]
            cv.paint(hsl, heart, T["heart"], H["heart"], texture=8)
            cv.paint(hsl, heart & (ellipsoid(X, Y, Zh, hc, (58, 40, 45)) < 0), T["heart"], H["aorta"] * 0.9,
                     texture=8)

    # ribs descending anteriorly inside the muscle wall, the lowest ones short; costal cartilage in front
    lateral = np.abs(np.arctan2(s, np.abs(np.cos(theta))))  # 0 at the sides, pi/2 at front and back
    ang = np.where(s > 0, math.pi / 2 - lateral, math.pi / 2 + lateral)  # 0 at the spine ... pi at the front
    zt = Z + 30.0 * ang[None]
    period = 27.0
    n = np.floor((zt - A["rib_low"]) / period)
    phase = np.mod(zt - A["rib_low"], period)
    band = (depth > 0.15 * wall) & (depth < 0.15 * wall + 9.0)
    alive = (n >= 0) & (ang[None] > 0.35) & (ang[None] < np.where(n < 2, 1.5 + 0.2 * n, 2.95))
    rib = band & alive & (np.abs(phase - period / 2) < 4.5)
    front = ang[None] > 1.9
    cv.paint(ALL, rib & ~front, T["cortical_bone"], H["rib"], texture=40)
    cv.paint(ALL, rib & front, T["cartilage"], H["cartilage"], texture=15)


def _spine(cv: Canvas, A: dict, H: dict) -> None:
    """Vertebrae (cortical shell, cancellous body, discs, canal, arch, processes) and the back muscles."""
    yv = A["y_v"]
    va, vb = A["vert"]
    back = A["b_post"] + A["mus"]
    sl = cv.box((-90, yv - vb - 40, -1e4), (90, back + 5, 1e4))
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    soft = np.isin(cv.tissue[sl], (T["visceral_fat"], T["muscle"], T["lung"]))
    canal_y = yv + vb + 9
    for side in (1, -1):  # paraspinal muscles behind the transverse processes
        para = ((X - side * 26) / 24) ** 2 + ((Y - (canal_y + 22)) / 26) ** 2 < 1
        cv.paint(sl, para & soft, T["muscle"], H["muscle"], texture=6)
    grow = np.clip((20.0 - Z) / 120.0, 0.0, 1.0)
    for side in (1, -1):  # psoas and quadratus lumborum, growing downwards
        ps = ((X - side * (va + 6 + 14 * grow)) / (4 + 15 * grow)) ** 2 + ((Y - (yv - 2)) / (4 + 11 * grow)) ** 2 < 1
        ql = ((X - side * (va + 42)) / (6 + 10 * grow)) ** 2 + ((Y - (canal_y + 4)) / (5 + 5 * grow)) ** 2 < 1
        cv.paint(sl, (ps | ql) & (Z < 30), T["muscle"], H["muscle"], texture=6)
    level = np.mod(Z - A["vert_phase"], A["vert_period"])
    disc = level < A["disc"]
    mid = (level > A["disc"] + 4) & (level < A["vert_period"] - 6)
    body = ((X / va) ** 2 + ((Y - yv) / vb) ** 2) < 1
    core = ((X / (va - 2.5)) ** 2 + ((Y - yv) / (vb - 2.5)) ** 2) < 1
    rc = np.hypot(X, (Y - canal_y) * 1.2)
    arch = (rc < 14) & (Y > yv + vb - 2) & ~disc
    spinous = (np.abs(X) < 3.5) & (Y > canal_y) & (Y < back - 8) & mid
    transverse = (np.abs(X) < va + 16) & (np.abs(Y - (canal_y - 4) - 0.25 * np.abs(X)) < 3.5) & mid
    cv.paint(sl, arch | spinous | transverse, T["cortical_bone"], H["cortical_bone"] * 0.6, texture=40)
    cv.paint(sl, rc < 8.5, T["csf"], H["csf"], texture=5)
    cv.paint(sl, body & ~disc, T["cortical_bone"], H["cortical_bone"], texture=40)
    cv.paint(sl, core & ~disc, T["vertebral_body"], H["vertebral_body"], texture=30)
    cv.paint(sl, body & disc, T["disc"], H["disc"], texture=6)


def _pelvis(cv: Canvas, A: dict, H: dict) -> None:
    """Iliac wings below the crest: curved plates (cortex around marrow), iliacus muscle in their hollow."""
    P = A["pelvis"]
    sl = cv.box((-A["a_in"], -A["b_ant"], -1e4), (A["a_in"], A["b_post"], P["crest"] + 5))
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    for side in (1, -1):
        dx, dy = side * (X - side * P["cx"]), Y - P["cy"]
        rr = np.hypot(dx, dy)
        ang = np.arctan2(dy, dx)  # 0 lateral, pi/2 posterior
        crest = P["crest"] - 12.0 * (ang - 0.9) ** 2
        span = (ang > 0.1) & (ang < 1.55) & (Z < crest)
        soft = np.isin(cv.tissue[sl], (T["visceral_fat"], T["muscle"], T["bowel_wall"], T["bowel_fluid"], T["stool"],
                                       T["gas"], T["oral_contrast"]))
        cv.paint(sl, span & (rr < P["R"] - P["th"] / 2) & (rr > P["R"] - P["th"] / 2 - 14) & soft, T["muscle"],
                 H["muscle"], texture=6)
        plate = span & (np.abs(rr - P["R"]) < P["th"] / 2)
        cv.paint(sl, plate, T["iliac_bone"], H["cortical_bone"] * 0.8, texture=40)
        cv.paint(sl, plate & (np.abs(rr - P["R"]) < P["th"] / 2 - 2), T["iliac_bone"], H["vertebral_body"], texture=30)


def _viscus(cv: Canvas, A: dict, H: dict, v: dict) -> None:
    """A hollow viscus: wall, then fluid, oral contrast, stool with bubbles, food or nothing; gas above a level."""
    sl, field = tube(cv, v["pts"], v["radii"])
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    if v.get("below_diaphragm"):
        field = np.maximum(field, Z - (diaphragm(A, X, Y) - 6))
    cv.paint(sl, field < 0, T["bowel_wall"], H["bowel_wall"], texture=8)
    lumen = field < -v["wall"]
    kind = v["kind"]
    if kind == "collapsed":
        return
    if kind == "fluid":
        cv.paint(sl, lumen, T["bowel_fluid"], H["bowel_fluid"], texture=5)
    elif kind == "contrast":
        cv.paint(sl, lumen, T["oral_contrast"], H["oral_contrast"], texture=25)
    elif kind == "food":
        cv.paint(sl, lumen, T["bowel_fluid"], H["bowel_fluid"] + 25, texture=25)
    elif kind == "stool":
        cv.paint(sl, lumen, T["stool"], H["stool"], texture=40)
        cv.paint(sl, lumen & (cv.texture[sl] > 0.8), T["gas"], H["gas"])
    if v["gas"] is not None:
        cv.paint(sl, lumen & (Y < v["gas"]), T["gas"], H["gas"])


def _kidney_field(cv: Canvas, k: dict, sl):
    X, Y, Z = cv.coords(sl)
    f = ellipsoid(X, Y, Z, k["c"], k["axes"], k["rot"])
    hc, hax = k["hilum_cut"]
    f = smax(f, -ellipsoid(X, Y, Z, hc, hax, k["rot"]), 3.0)
    amp, waves = k["bumps"]
    return f + amp * waves(X, Y, Z)


def _kidneys(cv: Canvas, A: dict, H: dict) -> dict:
    """Both kidneys (label 2): cortex, medulla and sinus by depth below the surface; a cyst or tumour."""
    found = {"kidney_cyst": False, "kidney_tumour": False}
    for idx, k in enumerate(A["kidneys"]):
        reach = k["axes"].max() + 6
        sl = cv.box(k["c"] - reach, k["c"] + reach, pad=2)
        if sl is None:
            continue
        f = _kidney_field(cv, k, sl)
        mask = _connected(cv, sl, f < 0)
        if not mask.any():
            continue
        depth = edt.edt(mask, anisotropy=cv.template_spacing)
        cv.paint(sl, mask, T["kidney_cortex"], H["kidney_cortex"], texture=8, label=KIDNEY)
        cv.paint(sl, mask & (depth > k["cortex"]), T["kidney_medulla"], H["kidney_medulla"], texture=8)
        cv.paint(sl, mask & (depth > k["cortex"] + k["medulla"]), T["kidney_sinus"], H["kidney_sinus"], texture=10)
        X, Y, Z = cv.coords(sl)
        for key, spill in (("kidney_cyst", 0.6), ("kidney_tumour", 0.5)):
            lesion = A[key]
            if lesion is None or lesion["kidney"] != idx:
                continue
            c = lesion["c"]
            dist = np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2)
            inside = (dist < lesion["r"]) & (f < lesion["r"] * spill)
            inside = _connected(cv, sl, inside | mask) & inside  # attached to the kidney, partly exophytic
            if not inside.any():
                continue
            if key == "kidney_cyst":
                cv.paint(sl, inside, T["kidney_cyst"], lesion["hu"], texture=3, label=KIDNEY)
            else:
                cv.paint(sl, inside, T["kidney_tumour"], lesion["hu"], texture=25, label=KIDNEY)
                cv.paint(sl, inside & (dist < lesion["r"] * 0.45), T["kidney_tumour"], lesion["core_hu"], texture=10)
            found[key] = True
    return found


def _pancreas(cv: Canvas, A: dict, H: dict) -> None:
    """A thin lobulated band (label 4) with fatty interdigitation texture; kidneys keep their voxels."""
    P = A["pancreas"]
    sl, f = tube(cv, P["pts"], P["radii"], pad=4.0)
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    (amp1, lob), (amp2, bend) = P["lobules"], P["bend"]
    f = f + amp1 * lob(X, Y, Z) + amp2 * bend(X, Y, Z)
    cv.paint(sl, (f < 0) & (cv.label[sl] != KIDNEY), T["pancreas"], H["pancreas"], texture=P["texture"],
             label=PANCREAS)


def _spleen(cv: Canvas, A: dict, H: dict) -> None:
    """Crescent along the left posterolateral wall (label 3), kept off the left kidney and the diaphragm."""
    S = A["spleen"]
    reach = S["axes"].max() + 8
    sl = cv.box(S["c"] - reach, S["c"] + reach, pad=2)
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    f = ellipsoid(X, Y, Z, S["c"], S["axes"], rotation(S["phi"]))
    hc, hr = S["hilum"]
    f = smax(f, -(np.sqrt((X - hc[0]) ** 2 + (Y - hc[1]) ** 2 + ((Z - hc[2]) * 0.6) ** 2) - hr), 4.0)
    f = smax(f, Z - (diaphragm(A, X, Y) - 4), 4.0)
    kl = A["kidneys"][0]
    f = smax(f, -ellipsoid(X, Y, Z, kl["c"], kl["axes"] + 3, kl["rot"]), 4.0)
    amp, waves = S["bumps"]
    f = f + amp * waves(X, Y, Z)
    cv.paint(sl, (f < 0) & (cv.label[sl] == 0), T["spleen"], H["spleen"], texture=5, label=SPLEEN)


def _liver(cv: Canvas, A: dict, H: dict) -> dict:
    """Liver (label 1) with vessels and lesions; gallbladder and IVC cut out of the label."""
    L = A["liver"]
    (c1, ax1), (c2, ax2, yaw2) = L["right"], L["left"]
    lo = np.minimum(c1 - ax1, c2 - ax2.max()) - 10
    hi = np.maximum(c1 + ax1, c2 + ax2.max()) + 10
    sl = cv.box(lo, hi, pad=2)
    found = {"liver_lesions": 0, "gallbladder": False}
    if sl is None:
        return found
    X, Y, Z = cv.coords(sl)
    f = smin(ellipsoid(X, Y, Z, c1, ax1), ellipsoid(X, Y, Z, c2, ax2, rotation(yaw2)), 22.0)
    f = smax(f, Z - (diaphragm(A, X, Y) - 4), 6.0)  # the dome under the diaphragm
    z_inf, rise = L["inferior"]
    f = smax(f, (z_inf + rise * (X - c1[0]) + 0.15 * (Y - c1[1])) - Z, 10.0)
    xa, ya, _ = A["aorta"]  # keep off the spine, aorta and crura
    column = np.hypot(np.maximum(np.abs(X - xa * 0.3) - 12, 0), np.maximum(ya + 5 - Y, 0)) - 12
    f = smax(f, -column, 6.0)
    kr = A["kidneys"][1]  # the right kidney's impression
    f = smax(f, -ellipsoid(X, Y, Z, kr["c"], kr["axes"] + 4, kr["rot"]), 5.0)
    amp, waves = L["bumps"]
    f = f + amp * waves(X, Y, Z)
    cv.paint(sl, (f < 0) & (cv.label[sl] == 0), T["liver"], H["liver"], texture=5, label=LIVER)

    for path, radii in A["liver_vessels"]:
        vsl, vf = tube(cv, path, radii)
        if vsl is not None:
            cv.paint(vsl, (vf < 0) & (cv.label[vsl] == LIVER), T["liver_vessel"], H["portal_vein"], texture=10)
    for les in A["liver_lesions"]:
        c = les["c"]
        dist = np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2)
        inside = (dist < les["r"]) & (cv.label[sl] == LIVER)
        if not inside.any():
            continue
        hu = les["cyst_hu"] if les["kind"] == "cyst" else H["liver"] - les["offset"]
        cv.paint(sl, inside, T["liver_lesion"], hu, texture=8)
        if les["rim"] and les["kind"] != "cyst":
            rim = inside & (dist > les["r"] * 0.75)
            cv.paint(sl, rim, T["liver_lesion"], H["liver"] + les["rim_offset"], texture=8)
        found["liver_lesions"] += 1

    gb = A["gallbladder"]
    if gb is not None:
        gsl = cv.box(gb["c"] - 40, gb["c"] + 40)
        if gsl is not None:
            Xg, Yg, Zg = cv.coords(gsl)
            g = ellipsoid(Xg, Yg, Zg, gb["c"], gb["axes"], gb["rot"])
            g[cv.label[gsl] > LIVER] = np.inf  # lies on the liver, never on another organ
            cv.paint(gsl, g < 0, T["bowel_wall"], H["bowel_wall"], label=0)
            cv.paint(gsl, g < -1.5, T["gallbladder"], H["gallbladder"], texture=3)
            found["gallbladder"] = bool((g < 0).any())
    # the IVC runs in a groove of the liver and is not liver
    vsl, vf = tube(cv, *A["ivc_path"])
    if vsl is not None:
        cv.paint(vsl, (vf < 0) & (cv.label[vsl] == LIVER), T["vein"], H["vein"], texture=10, label=0)
    return found

"""One random adult abdomen, described in template millimetres (all of a case's anatomical randomness).

Template frame: x towards the patient's left, y posterior, z superior (LPS); origin on the midline at the
level of the pancreas body. ``sample_anatomy`` draws everything (landmarks, sizes, shape perturbations,
gut paths and contents, findings) before anything is painted, so a case's anatomy does not depend on its
voxel grid; ``sample_hu`` draws the tissues' Hounsfield units.
"""

from __future__ import annotations

import math

import numpy as np

from nnsdm.phantom._geom import Waves, rotation


def _frame(long_axis, towards) -> np.ndarray:
    """Rotation whose local z is ``long_axis`` and whose local x points as near ``towards`` as possible."""
    z = np.asarray(long_axis, float)
    z /= np.linalg.norm(z)
    x = np.asarray(towards, float)
    x = x - x.dot(z) * z
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def cavity_radius(A: dict, theta):
    """Radius (mm) of the abdominal cavity outline at polar angle ``theta`` (0 = patient's left, pi/2 = posterior)."""
    c, s = np.cos(theta), np.sin(theta)
    post = s > 0
    p = np.where(post, A["back_power"], 2.0)
    b = np.where(post, A["b_post"], A["b_ant"])
    r = 1.0 / ((np.abs(c) / A["a_in"]) ** p + (np.abs(s) / b) ** p) ** (1.0 / p)
    for n, amp, phase in A["harmonics"]:
        r = r * (1.0 + amp * np.cos(n * theta + phase))
    return r


def diaphragm(A: dict, X, Y):
    """Height (mm) of the upper surface of the diaphragm above (X, Y): two domes and a lower central part."""
    out = None
    for x0, y0, top, curv in A["domes"]:
        dx, dy = X - x0, Y - y0
        z = top - dx * dx / (2 * curv) - np.where(dy > 0, dy * dy / (2 * A["dome_post"]), dy * dy / (2 * curv))
        out = z if out is None else np.maximum(out, z)
    return out


def _random_walk(rng, start, n, lo, hi, step) -> list[np.ndarray]:
    """A smooth random walk with momentum, reflected back into the box [lo, hi]."""
    pts = [np.asarray(start, float)]
    d = rng.normal(size=3)
    for _ in range(n - 1):
        d = 0.6 * d / np.linalg.norm(d) + 0.8 * rng.normal(size=3)
        d /= np.linalg.norm(d)
        p = pts[-1] + d * step
        for c in range(3):
            if p[c] < lo[c] or p[c] > hi[c]:
                d[c] = -d[c]
                p[c] = np.clip(2 * np.clip(p[c], lo[c], hi[c]) - p[c], lo[c], hi[c])
        pts.append(p)
    return pts


def sample_anatomy(rng: np.random.Generator) -> dict:
    """One patient's anatomy: landmarks, sizes, shape perturbations, gut and vessels, findings.

    The parts are drawn in a fixed order from ``rng``, so a seed always gives the same patient.
    """
    u = rng.uniform
    A: dict = {}
    for sample in (_sample_body, _sample_liver, _sample_spleen, _sample_kidneys, _sample_pancreas):
        sample(rng, A)
    A["oral_contrast"] = bool(u() < 0.25)
    A["gut"] = _sample_gut(rng, A)
    A["vessels"], A["liver_vessels"] = _sample_vessels(rng, A)
    A["gallbladder"] = _sample_gallbladder(rng, A) if u() < 0.85 else None
    _sample_findings(rng, A)
    return A


def _sample_body(rng: np.random.Generator, A: dict) -> None:
    """Body wall, spine, ribs, aorta, IVC, pelvis and diaphragm domes."""
    u = rng.uniform
    # body: cavity outline (superellipse behind), wall layers
    A["a_in"], A["b_ant"], A["b_post"] = u(140, 160), u(88, 112), u(72, 86)
    A["back_power"] = u(2.6, 3.4)
    A["harmonics"] = [(n, u(0, 0.03 / n ** 0.5), u(0, 2 * math.pi)) for n in (2, 3, 4, 5)]
    A["widen"] = u(-0.03, 0.08)
    A["fat"], A["fat_ant"], A["fat_post"] = u(6, 38), u(0.1, 0.8), u(0.3, 0.7)
    A["mus"], A["skin"] = u(7, 12), u(1.5, 2.5)
    A["table_gap"] = u(1, 6)
    A["y_v"] = A["b_post"] + A["mus"] - u(52, 62)  # vertebral body centre
    A["vert"] = (u(20, 25), u(14, 18))
    A["vert_period"], A["vert_phase"], A["disc"] = u(30, 36), u(0, 36), u(7, 10)
    A["rib_low"] = u(0, 25)  # posterior end of the lowest rib
    ra = u(9, 12.5)
    A["aorta"] = (u(5, 16), A["y_v"] - A["vert"][1] - ra - u(1, 4), ra)
    A["ivc"] = (-u(20, 27), A["y_v"] - A["vert"][1] - u(4, 9), u(9.5, 13))
    A["z_bif"] = u(-155, -120)
    A["pelvis"] = {"crest": A["z_bif"] - u(5, 25), "cx": u(45, 55), "cy": A["y_v"] - u(40, 50), "R": u(70, 80),
                   "th": u(7, 10)}
    top_r = u(112, 138)
    top_l = top_r - u(3, 22)
    curv = u(90, 130)
    A["domes"] = [(-u(55, 75), u(-5, 15), top_r, curv), (u(55, 75), u(-5, 15), top_l, curv),
                  (u(0, 20), u(-40, -20), min(top_r, top_l) - u(12, 25), curv * 1.6)]
    A["dome_post"] = u(28, 45)
    A["dome_top"] = top_r
    xi, yi, ri = A["ivc"]
    A["ivc_path"] = ([np.array([xi, yi, A["z_bif"] - 150]), np.array([xi, yi, 20.0]),
                      np.array([xi + 4, yi - 14, 75.0]), np.array([xi + 10, yi - 22, top_r - 5]),
                      np.array([xi + 22, yi - 32, top_r + 40])], [ri * 0.9, ri, ri * 1.05, ri * 1.1, ri * 1.2])


def _sample_liver(rng: np.random.Generator, A: dict) -> None:
    """The liver: a large right lobe and a thin left lobe tapering across the midline."""
    u = rng.uniform
    # liver: a large right lobe and a thin left lobe tapering across the midline, under the right dome
    f = u(0.88, 1.12)
    ax = np.array([u(70, 82), u(74, 86), u(82, 96)]) * f
    c1 = np.array([-A["a_in"] + ax[0] + u(2, 8), u(-22, -8), u(30, 48)])
    A["liver"] = {
        "right": (c1, ax),
        "left": (np.array([u(5, 25), -A["b_ant"] * u(0.5, 0.65), c1[2] + u(15, 30)]),
                 np.array([u(55, 80), u(22, 32), u(25, 35)]) * f, u(-0.5, -0.15)),
        "inferior": (u(-60, -35), u(0.25, 0.5)),  # height of the inferior surface at the right lobe, rise to the left
        "bumps": (u(3, 7), Waves(rng, 7, (60, 160))),
    }
    A["fatty_liver"] = bool(u() < 0.2)


def _sample_spleen(rng: np.random.Generator, A: dict) -> None:
    """The spleen, posterolateral left, following the wall."""
    u = rng.uniform
    # spleen: posterolateral left, following the wall; concave hilum facing the kidney and pancreas tail
    f = u(0.95, 1.35)
    phi = u(0.35, 0.65)
    sax = np.array([u(18, 24), u(45, 58), u(42, 56)]) * f
    dist = float(cavity_radius(A, phi)) - sax[0] - u(3, 8)
    radial = np.array([math.cos(phi), math.sin(phi), 0.0])
    sc = np.array([dist * radial[0], dist * radial[1], u(44, 58)])
    A["spleen"] = {"c": sc, "axes": sax, "phi": phi, "hilum": (sc - radial * (sax[0] + u(16, 26)), u(20, 28)),
                   "bumps": (u(2, 4), Waves(rng, 6, (40, 110)))}


def _sample_kidneys(rng: np.random.Generator, A: dict) -> None:
    """Both kidneys beside the spine."""
    u = rng.uniform
    # kidneys beside the spine, upper poles medial and posterior, hilum anteromedial; the right one lower
    A["kidneys"] = []
    for side in (1, -1):  # left, right
        c = np.array([side * u(62, 74), A["y_v"] + u(-2, 10), u(-18, 2) if side > 0 else u(-36, -14)])
        axes = np.array([u(23, 28), u(20, 25), u(48, 58)]) * u(0.88, 1.12)
        alpha = u(0.4, 0.9)
        hilum = np.array([-side * math.cos(alpha), -math.sin(alpha), 0.0])
        rot = _frame([-side * u(0.12, 0.3), u(0.1, 0.3), 1.0], hilum)
        A["kidneys"].append({
            "c": c, "axes": axes, "rot": rot, "hilum": hilum, "side": side,
            "hilum_cut": (c + hilum * axes[0] * u(0.85, 1.0), (u(9, 13), u(9, 13), axes[2] * u(0.3, 0.45))),
            "bumps": (u(1, 2.5), Waves(rng, 5, (25, 70))), "cortex": u(8.5, 11), "medulla": u(5, 8)})


def _sample_pancreas(rng: np.random.Generator, A: dict) -> None:
    """The pancreas centre line from the splenic hilum to the duodenum."""
    u = rng.uniform
    sc, sax, phi = A["spleen"]["c"], A["spleen"]["axes"], A["spleen"]["phi"]
    radial = np.array([math.cos(phi), math.sin(phi), 0.0])
    # pancreas centre line: tail at the splenic hilum, body and neck in front of the aorta, head by the duodenum
    xa, ya, _ = A["aorta"]
    kl = A["kidneys"][0]
    tail = sc - radial * (sax[0] + u(10, 20))
    tail[1] = min(tail[1], kl["c"][1] - kl["axes"][1] - u(2, 8))
    tail[2] = sc[2] - u(20, 32)
    pts = np.array([tail, [u(28, 45), ya - u(28, 40), u(3, 12)], [u(-6, 6), ya - u(34, 44), u(-3, 4)],
                    [u(-38, -26), ya - u(26, 36), u(-20, -10)], [u(-22, -10), ya - u(12, 20), u(-36, -28)]])
    radii = np.array([u(7.5, 10.5), u(9, 12), u(7, 9.5), u(12.5, 17), u(7.5, 10.5)]) * u(0.8, 1.1)
    A["pancreas"] = {"pts": pts, "radii": radii, "lobules": (u(1.2, 2.4), Waves(rng, 10, (8, 22))),
                     "bend": (u(0.5, 1.5), Waves(rng, 4, (30, 60))), "texture": u(8, 14)}


def _sample_findings(rng: np.random.Generator, A: dict) -> None:
    """Liver lesions (in the right lobe), a kidney cyst and/or tumour."""
    u = rng.uniform
    c1, ax = A["liver"]["right"]
    # findings: liver lesions (in the right lobe), a kidney cyst and/or tumour
    n_lesions = int(rng.choice([1, 1, 2, 3, 5])) if u() < 0.3 else 0
    lesions = []
    for _ in range(n_lesions):
        v = rng.normal(size=3)
        v *= u(0, 0.7) / np.linalg.norm(v)
        kind = "cyst" if u() < 0.3 else "metastasis"
        lesions.append({"c": c1 + v * ax, "r": u(4, 20), "kind": kind, "offset": u(35, 70), "cyst_hu": u(0, 20),
                        "rim": bool(u() < 0.4), "rim_offset": u(-10, 20)})
    A["liver_lesions"] = lesions
    cyst_side = int(rng.integers(0, 2))
    A["kidney_cyst"] = None
    if u() < 0.3:
        k = A["kidneys"][cyst_side]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        A["kidney_cyst"] = {"kidney": cyst_side, "c": k["c"] + k["rot"] @ (d * k["axes"] * u(0.6, 0.9)),
                            "r": u(5, 15), "hu": u(0, 20)}
    A["kidney_tumour"] = None
    if u() < 0.12:
        k = A["kidneys"][1 - cyst_side]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        A["kidney_tumour"] = {"kidney": 1 - cyst_side, "c": k["c"] + k["rot"] @ (d * k["axes"] * u(0.4, 0.8)),
                              "r": u(9, 20), "hu": u(60, 110), "core_hu": u(20, 40)}


def _sample_gut(rng, A) -> list[dict]:
    """Small bowel loops, colon, stomach and duodenum: centre lines, radii, wall, contents, gas level."""
    u = rng.uniform
    xa, ya, ra = A["aorta"]
    head = A["pancreas"]["pts"][3]
    top_l = A["domes"][1][2]
    contrast = A["oral_contrast"]
    gut = []
    # small bowel in the mid and lower abdomen, the jejunum starting at the duodenojejunal flexure
    lo = np.array([-A["a_in"] + 45, -A["b_ant"] + 18, -230.0])
    hi = np.array([A["a_in"] - 45, ya - 5, -25.0])
    for i in range(int(rng.integers(8, 14))):
        start = np.array([xa + 35, ya - 40, -5.0]) if i == 0 else lo + rng.uniform(size=3) * (hi - lo)
        loop = _random_walk(rng, start, int(rng.integers(5, 10)), lo, hi, u(28, 40))
        radius = u(8, 13)
        kind = str(rng.choice(["fluid", "fluid", "collapsed", "contrast" if contrast else "fluid"]))
        gas = float(np.mean([p[1] for p in loop])) - radius * u(0.2, 0.8) if kind == "fluid" and u() < 0.3 else None
        gut.append({"pts": loop, "radii": [radius, radius], "wall": u(1.5, 2.8), "kind": kind, "gas": gas})

    # colon: caecum, ascending, hepatic flexure, transverse, splenic flexure, descending, sigmoid
    a, b = A["a_in"], A["b_ant"]
    colon = [[-a + 55, -30, -190.0], [-a + 40, 5, -110.0], [-a + 42, -5, -55.0], [-a + 60, -45, -25.0],
             [-45, -b + 35, -45.0], [5, -b + 28, -65.0], [55, -b + 38, -35.0], [a - 40, -20, 10.0],
             [a - 32, 20, -40.0], [a - 38, 15, -120.0], [50, -20, -190.0]]
    colon = [np.array(p) + rng.normal(0, 8, 3) for p in colon]
    radii = [u(20, 28), u(18, 25), u(16, 22), u(16, 22), u(14, 22), u(13, 20), u(14, 22), u(14, 20), u(13, 18),
             u(12, 17), u(12, 17)]
    for seg in (slice(0, 4), slice(3, 8), slice(7, 11)):
        kind = "stool" if u() < 0.7 else "fluid"
        gas = float(np.mean([p[1] for p in colon[seg]])) - u(0, 12)
        gut.append({"pts": colon[seg], "radii": radii[seg], "wall": u(1.2, 2.2), "kind": kind, "gas": gas})

    # stomach: fundus under the left dome, body, antrum crossing the midline to the pylorus
    stomach = [np.array([u(35, 55), u(0, 20), top_l - u(22, 32)]), np.array([u(45, 65), -u(30, 45), u(45, 62)]),
               np.array([u(30, 45), -u(55, 68), u(15, 28)]), np.array([u(-5, 10), -u(60, 72), u(2, 14)]),
               np.array([u(-30, -20), -u(45, 55), u(5, 14)])]
    srad = np.array([u(26, 36), u(22, 30), u(17, 24), u(13, 18), u(8, 10)]) * u(0.75, 1.25)
    kind = "contrast" if contrast else str(rng.choice(["fluid", "food", "collapsed"]))
    gut.append({"pts": stomach, "radii": srad, "wall": u(2.5, 4.5), "kind": kind,
                "gas": float(stomach[0][1]) - u(0, 1.0) * srad[0], "below_diaphragm": True})

    # duodenum: C-loop around the pancreatic head, third part between aorta and SMA
    duo = [stomach[-1], [head[0] - 18, head[1] - 8, 6.0], [head[0] - 26, head[1] + 6, head[2]],
           [head[0] - 18, ya - 4, head[2] - 32], [xa, ya - ra - 9, head[2] - 36], [xa + 26, ya - 18, head[2] - 24],
           [xa + 35, ya - 40, -5.0]]
    kind = "contrast" if contrast and u() < 0.7 else str(rng.choice(["fluid", "collapsed"]))
    gas = float(head[1]) - u(5, 25) if u() < 0.4 else None
    gut.append({"pts": [np.asarray(p, float) for p in duo], "radii": [u(8, 11)] * 3 + [u(6, 8)] + [u(8, 11)] * 3,
                "wall": u(1.5, 2.5), "kind": kind, "gas": gas})
    return gut


def _sample_vessels(rng, A) -> tuple[list, list]:
    """Extrahepatic vessels (path, radii, tissue, HU key) and intrahepatic branches (path, radii)."""
    u = rng.uniform
    xa, ya, ra = A["aorta"]
    xi, yi, ri = A["ivc"]
    zb, top = A["z_bif"], A["dome_top"]
    P = A["pancreas"]
    pts, prad = P["pts"], P["radii"]
    neck = pts[2]
    conf = neck + np.array([-3, prad[2] + u(3, 6), -2])
    lc, lax = A["liver"]["right"]
    hilum = np.array([lc[0] + lax[0] * 0.45, lc[1] - 5, lc[2] - lax[2] * 0.35])
    S = A["spleen"]
    radial = np.array([math.cos(S["phi"]), math.sin(S["phi"]), 0.0])
    shilum = S["c"] - radial * S["axes"][0] * 0.9
    back = np.array([0, 1.0, 0])
    V = [
        ([[xa, ya, zb], [xa - 2, ya + 3, 40.0], [xa - 4, ya + 10, top + 60]], [ra, ra * 1.1, ra * 1.2], "aorta",
         "aorta"),
        (A["ivc_path"][0], A["ivc_path"][1], "vein", "vein"),
    ]
    for side in (1, -1):  # common iliac arteries
        V.append(([[xa, ya, zb + 5], [xa + side * 35, ya + 8, zb - 60], [xa + side * 55, ya + 15, zb - 150]],
                  [ra * 0.7, ra * 0.65, ra * 0.6], "artery", "aorta"))
    V += [
        ([[xa, ya - ra, u(8, 16)], [xa - 3, ya - ra - 14, 0], [xa - 6, ya - ra - 18, -60], [xa - 10, ya - 30, -140]],
         [u(3, 4.2)] * 4, "artery", "aorta"),  # superior mesenteric artery
        ([[neck[0] - 10, neck[1] + 6, -150], [neck[0] - 9, neck[1] + 5, -40], conf], [u(4.5, 6)] * 3,
         "portal_vein", "portal_vein"),  # superior mesenteric vein
        ([shilum, pts[0] + back * (prad[0] + 3), pts[1] + back * (prad[1] + 3.5), conf], [u(3.5, 5)] * 4,
         "portal_vein", "portal_vein"),  # splenic vein behind the pancreas
        ([conf, conf + np.array([-18, 2, 20]), hilum], [u(5.5, 7.5)] * 3, "portal_vein", "portal_vein"),
        ([[xa, ya - ra, 28.0], [xa, ya - ra - 12, 30], pts[0] + np.array([0, 0, 12]) + rng.normal(0, 3, 3), shilum],
         [u(2.2, 3.2)] * 4, "artery", "aorta"),  # splenic artery
        ([[xa, ya - ra - 12, 30], hilum + np.array([10, -5, -5])], [u(2, 3)] * 2, "artery", "aorta"),  # hepatic
    ]
    for k in A["kidneys"]:
        kh = k["c"] + k["hilum"] * k["axes"][0] * 1.05
        if k["side"] > 0:  # the left renal vein passes in front of the aorta into the IVC
            vein = [kh, [xa, ya - ra - 6, kh[2] + 3], [xi, yi, kh[2] + 5]]
        else:
            vein = [kh, [xi, yi, kh[2] + 5]]
        V.append((vein, [u(4, 5.5)] * len(vein), "vein", "vein"))
        art = [[xa + k["side"] * ra * 0.8, ya, kh[2] + 8]]
        if k["side"] < 0:  # the right renal artery passes behind the IVC
            art.append([xi, yi + ri + 4, kh[2] + 6])
        art.append(kh + np.array([0, 2, 2]))
        V.append((art, [u(2.2, 3)] * len(art), "artery", "aorta"))
    # mesenteric twigs fanning out from the superior mesenteric vessels towards the bowel
    lo = np.array([-A["a_in"] + 50, -A["b_ant"] + 20, -200.0])
    hi = np.array([A["a_in"] - 50, ya, -20.0])
    for i in range(int(rng.integers(8, 14))):
        start = np.array([xa - 8 + u(-4, 4), ya - ra - 20, u(-110, -15)])
        walk = _random_walk(rng, start, int(rng.integers(3, 5)), lo, hi, u(18, 30))
        V.append((walk, [u(1.6, 2.6), u(1.2, 1.8)], "artery" if i % 2 else "portal_vein",
                  "aorta" if i % 2 else "portal_vein"))
    V = [([np.asarray(p, float) for p in path], radii, tis, hu) for path, radii, tis, hu in V]

    # portal branches from the hilum, hepatic veins converging on the IVC below the right dome
    ends = [lc + np.array([-lax[0] * 0.6, lax[1] * 0.2, -10]), lc + np.array([-lax[0] * 0.2, lax[1] * 0.4, 25]),
            np.array([u(5, 25), -A["b_ant"] * 0.6, lc[2] + 25])]
    hv0 = np.array([xi + 10, yi - 22, top - 15])
    hends = [lc + np.array([-lax[0] * 0.5, 0.2 * lax[1], 25]), lc + np.array([5, -lax[1] * 0.5, 20]),
             np.array([u(0, 20), -A["b_ant"] * 0.55, lc[2] + 35])]
    inner = []
    for a, e in [(hilum, e) for e in ends] + [(hv0, e) for e in hends]:
        inner.append(([a, (a + e) / 2 + rng.normal(0, 6, 3), e], [u(4, 5.5), u(3, 4), u(1.8, 2.5)]))
    return V, inner


def _sample_gallbladder(rng, A) -> dict:
    u = rng.uniform
    lc, lax = A["liver"]["right"]
    c = np.array([lc[0] + lax[0] * u(0.3, 0.55), lc[1] - lax[1] * u(0.35, 0.6), A["liver"]["inferior"][0] + u(20, 40)])
    return {"c": c, "axes": (u(11, 16), u(13, 18), u(26, 38)), "rot": rotation(u(-0.5, 0.5), u(-0.4, 0.4), u(0.2, 0.6))}


def sample_hu(rng: np.random.Generator, A: dict) -> dict:
    """Per-case Hounsfield units of each tissue, portal-venous phase."""
    u = rng.uniform
    enh = u(0.85, 1.15)  # contrast timing and dose
    return {
        "air": -1000.0, "skin": u(20, 60), "subcutaneous_fat": u(-112, -90), "visceral_fat": u(-108, -85),
        "muscle": u(40, 60), "cortical_bone": u(650, 1100), "vertebral_body": u(160, 300), "disc": u(70, 100),
        "csf": u(5, 20), "lung": u(-880, -830), "heart": u(90, 130) * enh, "aorta": u(150, 230) * enh,
        "vein": u(125, 185) * enh, "portal_vein": u(150, 200) * enh,
        "liver": u(25, 65) if A["fatty_liver"] else u(97, 123), "spleen": u(106, 126),
        "kidney_cortex": u(160, 195), "kidney_medulla": u(100, 130), "kidney_sinus": u(-40, 10),
        "pancreas": u(90, 104), "gallbladder": u(0, 20), "bowel_wall": u(70, 110), "bowel_fluid": u(5, 30),
        "gas": -1000.0, "stool": u(-60, 20), "oral_contrast": u(220, 420), "table": u(100, 300),
        "cartilage": u(90, 200), "rib": u(350, 650),
    }

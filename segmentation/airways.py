"""The airway tree from the trachea down, and its five lobar bronchi (no learned model).

Works on a working grid (about 1.4 mm in-plane) covering both lungs, in the canonical
orientation (x -> patient's left, y -> posterior, z -> superior; see segmentation.types).

1. Trachea: in the upper part of the lungs' cranio-caudal extent, an air-filled (smoothed
   HU < ``TRACHEA_HU``), compact 2-D component of 80-700 mm^2 near the midline between the
   two lungs, present on several consecutive slices; the most cranial such slice is the seed.
2. Tree: the 3-D component of smoothed HU < T that holds the seed, below the seed slice, for
   T rising from ``GROW_HU[0]`` in steps; the last T before a leak (the tree volume jumps by
   more than ``LEAK_RATIO`` or passes ``MAX_TREE_ML``) is kept.
3. Topology by wave fronts: breadth-first (26-connected) distance from the seed inside the
   tree; shells of ``SHELL_STEPS`` steps; each connected piece of a shell is a node, its parent
   is the piece of the previous shell it touches most. A front that splits is a bifurcation.
   A branch is "significant" when its subtree spans at least ``MIN_BRANCH_SHELLS`` shells and
   holds at least ``MIN_BRANCH_FRACTION`` of its parent's subtree voxels (spurs and noise
   are not).
4. Lobar bronchi from topology and direction: the carina is the first significant split
   (left main bronchus = the child whose subtree lies towards +x). Right: at the right main
   bronchus's first significant split the child whose subtree is more cranial is the upper
   lobe bronchus, the other the bronchus intermedius; along the intermedius the first
   significant side branch whose subtree lies anterior (``RML_MIN_ANTERIOR_MM``) of the rest
   is the middle lobe bronchus, everything else is lower lobe. Left: at the left main
   bronchus's first significant split the child more cranial + anterior is the upper lobe
   bronchus (with the lingula), the other the lower lobe bronchus.

Each step can fail (no trachea, leak at the first threshold, no split, a lobar subtree too
small): the result then says which lobes were not identified and why (``notes``), and the
caller falls back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segmentation.types import Lobe

TRACHEA_HU = -900.0
GROW_HU = (-950.0, -830.0, 20.0)  # first, last, step
LEAK_RATIO = 1.6
LEAK_MIN_ML = 40.0
MAX_TREE_ML = 250.0
SHELL_STEPS = 2
MIN_BRANCH_SHELLS = 3
MIN_BRANCH_FRACTION = 0.04
RML_MIN_ANTERIOR_MM = 8.0
MIN_LOBAR_VOXELS = 15
EXTEND_HU = -700.0
EXTEND_BOX_MM = 24.0
EXTEND_MAX_ML = 0.6
EXTEND_ROUNDS = 3
EXTEND_STEP_HU = 10.0


@dataclass
class AirwayTree:
    """Airway tree on the grid it was traced on.

    mask: bool, the traced tree (trachea to the smallest bronchi reached).
    lobar: uint8, Lobe value on the airway voxels of each identified lobar bronchus's subtree
        (0 on the trachea, main bronchi, bronchus intermedius and unidentified branches).
    identified: the lobes whose lobar bronchus was found.
    threshold_hu: the growing threshold kept (nan when no tree).
    notes: what was found or why not.
    """

    mask: np.ndarray
    lobar: np.ndarray
    identified: set[Lobe] = field(default_factory=set)
    threshold_hu: float = float("nan")
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# trachea and growing


def _find_trachea_seed(smooth: np.ndarray, left: np.ndarray, right: np.ndarray,
                       spacing) -> tuple[int, np.ndarray] | None:
    """(slice index, 2-D mask) of the trachea at its most cranial reliable slice."""
    lung = left | right
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    if zs.size < 5 or not left.any() or not right.any():
        return None
    z_lo, z_hi = zs[0], zs[-1]
    xr = np.nonzero(right)[2].mean()
    xl = np.nonzero(left)[2].mean()
    mid_x = (xr + xl) / 2.0
    half_gap = max(abs(xl - xr) / 2.0 * 0.6, 10.0 / spacing[2])
    pix = spacing[1] * spacing[2]
    start = z_lo + int(0.55 * (z_hi - z_lo))
    found: dict[int, tuple[np.ndarray, float, float]] = {}
    for z in range(start, min(z_hi + 1, smooth.shape[0])):
        lab, n = ndi.label(smooth[z] < TRACHEA_HU)
        if n == 0:
            continue
        best = None
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl] == i
            area = comp.sum() * pix
            if not 80.0 <= area <= 700.0:
                continue
            h = (sl[0].stop - sl[0].start) * spacing[1]
            w = (sl[1].stop - sl[1].start) * spacing[2]
            if area < 0.5 * h * w or max(h, w) > 2.2 * min(h, w):
                continue
            cy, cx = ndi.center_of_mass(comp)
            cx += sl[1].start
            cy += sl[0].start
            if abs(cx - mid_x) > half_gap:
                continue
            if lung[z, int(round(cy)), int(round(cx))]:
                continue  # air inside a lung is not the trachea
            d = abs(cx - mid_x)
            if best is None or d < best[0]:
                best = (d, lab == i, cy, cx)
        if best is not None:
            found[z] = (best[1], best[2], best[3])
    # the most cranial slice that starts a run of >= 3 slices whose centres stay close
    for z in sorted(found, reverse=True):
        run, (m, cy, cx) = 1, found[z]
        k = z - 1
        while k in found and run < 3:
            _, cy2, cx2 = found[k]
            if np.hypot((cy2 - cy) * spacing[1], (cx2 - cx) * spacing[2]) > 8.0:
                break
            cy, cx = cy2, cx2
            run += 1
            k -= 1
        if run >= 3:
            return z, found[z][0]
    return None


def _grow(smooth: np.ndarray, z_seed: int, seed2d: np.ndarray, voxel_ml: float,
          notes: list[str]) -> tuple[np.ndarray | None, float]:
    sub = np.ascontiguousarray(smooth[: z_seed + 1])
    img = sitk.GetImageFromArray(sub)
    seeds = [(int(x), int(y), int(z_seed)) for y, x in np.argwhere(seed2d)]
    kept, kept_t, prev_ml = None, float("nan"), None
    for t in np.arange(GROW_HU[0], GROW_HU[1] + 1e-6, GROW_HU[2]):
        # seeded flood fill (visits only the grown region; 6-connected)
        tree = sitk.GetArrayViewFromImage(
            sitk.ConnectedThreshold(img, seedList=seeds, lower=-1e9, upper=float(t))).astype(bool)
        tree[z_seed] |= seed2d
        ml = tree.sum() * voxel_ml
        leak = ml > MAX_TREE_ML or (prev_ml is not None and ml > LEAK_MIN_ML and ml > LEAK_RATIO * prev_ml)
        if leak:
            break
        kept, kept_t, prev_ml = tree, float(t), ml
    if kept is None:
        notes.append("airway tree leaks into the lung at the first threshold")
        return None, kept_t
    out = np.zeros(smooth.shape, bool)
    out[: z_seed + 1] = kept
    return out, kept_t


def _extend(smooth: np.ndarray, tree: np.ndarray, spacing, t_hu: float, z_seed: int,
            seed: np.ndarray) -> np.ndarray:
    """Smaller bronchi: local region growing at the tree's ends (``EXTEND_ROUNDS`` rounds).

    Around every end of the tree (a voxel farthest from the trachea among its neighbours), in
    a box of ``EXTEND_BOX_MM``, the tree grows with the threshold raised step by step from the
    global one up to ``EXTEND_HU``; the highest threshold whose growth in the box stays under
    ``EXTEND_MAX_ML`` (a bronchus, not the parenchyma) is kept (found by bisection: the growth
    only rises with the threshold).
    """
    half = [max(2, int(round(EXTEND_BOX_MM / 2 / s))) for s in spacing]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    thresholds = np.arange(t_hu + EXTEND_STEP_HU, EXTEND_HU + 1e-6, EXTEND_STEP_HU)
    for _ in range(EXTEND_ROUNDS):
        dist = _bfs(tree, seed & tree)
        ends = tree & (dist >= ndi.maximum_filter(dist, size=3)) & (dist > 5)
        pts = np.argwhere(ends)
        done = np.zeros(tree.shape, bool)
        added = np.zeros(tree.shape, bool)
        for p in pts[np.argsort(-dist[tuple(pts.T)])]:
            if done[tuple(p)]:
                continue
            box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(p, half, tree.shape))
            done[box] = True
            sub_t = tree[box]
            sub_s = smooth[box]
            best = None
            lo, hi = 0, len(thresholds) - 1  # growth rises with the threshold: bisect
            while lo <= hi:
                mid = (lo + hi) // 2
                lab, _ = ndi.label((sub_s < thresholds[mid]) | sub_t)
                ids = np.unique(lab[sub_t])
                grown = np.isin(lab, ids[ids > 0]) & ~sub_t
                if grown.sum() * voxel_ml > EXTEND_MAX_ML:
                    hi = mid - 1
                else:
                    best, lo = grown, mid + 1
            if best is not None:
                added[box] |= best
        added[z_seed + 1:] = False
        if not added.any():
            break
        tree = tree | added
    return tree


# ---------------------------------------------------------------------------------------
# wave-front tree


@dataclass
class _Tree:
    node_of: np.ndarray        # per tree voxel (flat order of ``coords``): node id
    coords: np.ndarray         # (n, 3) voxel indices
    parent: np.ndarray         # per node: parent node id (-1 for roots)
    shell: np.ndarray          # per node
    children: list[list[int]]
    sub_vox: np.ndarray        # per node: voxels in the node's subtree
    sub_sum: np.ndarray        # per node: (3,) sum of the subtree's voxel mm coordinates
    sub_depth: np.ndarray      # per node: deepest shell in the subtree
    centroid_mm: np.ndarray    # per node: (3,) mm centroid of the node itself


def _bfs(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """26-connected breadth-first step count from ``seed`` inside ``mask`` (-1 unreached)."""
    pad = np.pad(mask, 1)
    shape = pad.shape
    flat = pad.ravel()
    dist = np.full(flat.size, -1, np.int32)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    offs = np.array([np.dot(d, strides) for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]) - strides.sum()
    front = np.ravel_multi_index(tuple((np.argwhere(seed & mask) + 1).T), shape)
    dist[front] = 0
    step = 0
    while front.size:
        step += 1
        nb = (front[:, None] + offs[None, :]).ravel()
        nb = nb[flat[nb] & (dist[nb] < 0)]
        nb = np.unique(nb)
        dist[nb] = step
        front = nb
    return dist.reshape(shape)[1:-1, 1:-1, 1:-1]


def _build_tree(mask: np.ndarray, seed: np.ndarray, spacing) -> _Tree | None:
    dist = _bfs(mask, seed)
    coords = np.argwhere(dist >= 0)
    if len(coords) < 50:
        return None
    shell = dist[tuple(coords.T)] // SHELL_STEPS
    index = np.full(mask.shape, -1, np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    pad_index = np.pad(index, 1, constant_values=-1)
    rows_same, cols_same, rows_up, cols_up = [], [], [], []
    for d in np.ndindex(3, 3, 3):
        if d <= (1, 1, 1):
            continue  # 13 forward offsets (the others are the same pairs reversed)
        c = coords + 1 + (np.array(d) - 1)
        nb = pad_index[tuple(c.T)]
        ok = nb >= 0
        a, b = np.nonzero(ok)[0], nb[ok]
        same = shell[a] == shell[b]
        rows_same.append(a[same])
        cols_same.append(b[same])
        diff = shell[a] - shell[b]
        up = diff == 1  # a is one shell deeper than b
        rows_up.append(a[up])
        cols_up.append(b[up])
        down = diff == -1
        rows_up.append(b[down])
        cols_up.append(a[down])
    rs, cs = np.concatenate(rows_same), np.concatenate(cols_same)
    n = len(coords)
    graph = coo_matrix((np.ones(rs.size, np.int8), (rs, cs)), shape=(n, n))
    n_nodes, node_of = connected_components(graph, directed=False)
    ru, cu = np.concatenate(rows_up), np.concatenate(cols_up)
    # parent: the node of the previous shell with the most contacts
    child_node, parent_node = node_of[ru], node_of[cu]
    parent = np.full(n_nodes, -1, np.int64)
    if child_node.size:
        key = child_node.astype(np.int64) * n_nodes + parent_node
        uniq, counts = np.unique(key, return_counts=True)
        ch, pa = uniq // n_nodes, uniq % n_nodes
        order = np.lexsort((-counts, ch))
        ch, pa = ch[order], pa[order]
        first = np.ones(ch.size, bool)
        first[1:] = ch[1:] != ch[:-1]
        parent[ch[first]] = pa[first]
    node_shell = np.zeros(n_nodes, np.int64)
    node_shell[node_of] = shell
    mm = coords * np.asarray(spacing, float)
    vox = np.bincount(node_of, minlength=n_nodes).astype(np.float64)
    sums = np.stack([np.bincount(node_of, weights=mm[:, k], minlength=n_nodes) for k in range(3)], axis=1)
    centroid = sums / np.maximum(vox, 1)[:, None]
    sub_vox, sub_sum, sub_depth = vox.copy(), sums.copy(), node_shell.copy()
    for nd in np.argsort(-node_shell):  # deepest first: accumulate into parents
        p = parent[nd]
        if p >= 0:
            sub_vox[p] += sub_vox[nd]
            sub_sum[p] += sub_sum[nd]
            sub_depth[p] = max(sub_depth[p], sub_depth[nd])
    children: list[list[int]] = [[] for _ in range(n_nodes)]
    for nd in range(n_nodes):
        if parent[nd] >= 0:
            children[parent[nd]].append(nd)
    return _Tree(node_of, coords, parent, node_shell, children, sub_vox, sub_sum, sub_depth, centroid)


def _sub_centroid(t: _Tree, nd: int) -> np.ndarray:
    return t.sub_sum[nd] / max(t.sub_vox[nd], 1.0)


def _significant(t: _Tree, nd: int) -> list[int]:
    """Children of ``nd`` that start a real branch, largest subtree first."""
    out = [c for c in t.children[nd]
           if t.sub_depth[c] - t.shell[c] + 1 >= MIN_BRANCH_SHELLS
           and t.sub_vox[c] >= MIN_BRANCH_FRACTION * t.sub_vox[nd]]
    return sorted(out, key=lambda c: -t.sub_vox[c])


def _next_split(t: _Tree, nd: int) -> tuple[int, list[int]] | None:
    """Follow the single significant child down to the first node with >= 2 of them."""
    while True:
        sig = _significant(t, nd)
        if len(sig) >= 2:
            return nd, sig
        if not sig:
            return None
        nd = sig[0]


def _subtree_nodes(t: _Tree, nd: int) -> list[int]:
    out, stack = [], [nd]
    while stack:
        k = stack.pop()
        out.append(k)
        stack.extend(t.children[k])
    return out


def _identify(t: _Tree, notes: list[str]) -> dict[Lobe, list[int]]:
    """Lobe -> the root nodes of its lobar bronchus subtree(s)."""
    root_nodes = np.nonzero(t.parent < 0)[0]
    root = int(root_nodes[np.argmax(t.sub_vox[root_nodes])])
    split = _next_split(t, root)
    if split is None:
        notes.append("airway tree: no carina (the trachea does not divide)")
        return {}
    carina, sig = split
    a, b = sig[0], sig[1]
    left_main, right_main = (a, b) if _sub_centroid(t, a)[2] > _sub_centroid(t, b)[2] else (b, a)
    out: dict[Lobe, list[int]] = {}

    # right: upper lobe bronchus, then the middle lobe bronchus off the intermedius
    split = _next_split(t, right_main)
    if split is None:
        notes.append("airway tree: right main bronchus does not divide")
    else:
        node, sig = split
        z_of = {c: _sub_centroid(t, c)[0] for c in sig}
        rul = max(sig, key=lambda c: z_of[c])
        trunk = max((c for c in sig if c != rul), key=lambda c: t.sub_vox[c])
        out[Lobe.RIGHT_UPPER] = [rul]
        # extra significant children at the same split that are cranial join the upper lobe
        for c in sig:
            if c not in (rul, trunk) and z_of[c] > z_of[trunk]:
                out[Lobe.RIGHT_UPPER].append(c)
        lower_side = [c for c in sig if c not in out[Lobe.RIGHT_UPPER] and c != trunk]
        rml = _find_middle(t, trunk, lower_side)
        if rml is None:
            notes.append("airway tree: no anterior branch off the bronchus intermedius (middle lobe)")
            out[Lobe.RIGHT_LOWER] = [trunk] + lower_side  # lower + middle together: not used alone
        else:
            out[Lobe.RIGHT_MIDDLE] = [rml]
            out[Lobe.RIGHT_LOWER] = [trunk] + lower_side  # the middle lobe subtree is carved out

    split = _next_split(t, left_main)
    if split is None:
        notes.append("airway tree: left main bronchus does not divide")
    else:
        node, sig = split
        base = t.centroid_mm[node]
        score = {c: (_sub_centroid(t, c)[0] - base[0]) - (_sub_centroid(t, c)[1] - base[1]) for c in sig}
        lul = max(sig, key=lambda c: score[c])
        lll = [c for c in sig if c != lul]
        if _sub_centroid(t, lul)[0] <= max(_sub_centroid(t, c)[0] for c in lll):
            notes.append("airway tree: the left upper lobe candidate is not above the lower one")
        else:
            out[Lobe.LEFT_UPPER] = [lul]
            out[Lobe.LEFT_LOWER] = lll
    return out


def _find_middle(t: _Tree, trunk: int, extra: list[int]) -> int | None:
    """The first significant side branch along the intermedius that runs anterior."""
    nd = trunk
    candidates: list[int] = list(extra)
    for _ in range(200):
        sig = _significant(t, nd)
        if not sig:
            break
        main = sig[0]
        candidates.extend(sig[1:])
        for c in candidates:
            rest = t.sub_sum[nd] - t.sub_sum[c]
            rest_n = t.sub_vox[nd] - t.sub_vox[c]
            if rest_n <= 0:
                continue
            rest_y = rest[1] / rest_n
            if _sub_centroid(t, c)[1] < rest_y - RML_MIN_ANTERIOR_MM and \
                    _sub_centroid(t, c)[0] > _sub_centroid(t, nd)[0] - 30.0:
                return c
        candidates = []
        nd = main
    return None


# ---------------------------------------------------------------------------------------
# public


def trace_airways(hu: np.ndarray, spacing: tuple[float, float, float], lung_left: np.ndarray,
                  lung_right: np.ndarray) -> AirwayTree:
    """Trace the airway tree and label the lobar bronchi on this grid (see module docstring).

    hu: HU (z, y, x), canonical orientation; lung_left / lung_right: boolean lung masks on
    the same grid (the trachea and main bronchi are found outside or between them).
    """
    notes: list[str] = []
    empty = np.zeros(hu.shape, bool)
    smooth = ndi.gaussian_filter(hu.astype(np.float32), [max(0.0, 0.6 / s) for s in spacing])
    seed = _find_trachea_seed(smooth, lung_left, lung_right, spacing)
    if seed is None:
        notes.append("airway tree: trachea not found")
        return AirwayTree(empty, np.zeros(hu.shape, np.uint8), notes=notes)
    z_seed, seed2d = seed
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tree_mask, t_hu = _grow(smooth, z_seed, seed2d, voxel_ml, notes)
    if tree_mask is None:
        return AirwayTree(empty, np.zeros(hu.shape, np.uint8), notes=notes)
    seed3 = np.zeros(hu.shape, bool)
    seed3[z_seed] = seed2d
    tree_mask = _extend(smooth, tree_mask, spacing, t_hu, z_seed, seed3)
    tree = _build_tree(tree_mask, seed3 & tree_mask, spacing)
    lobar = np.zeros(hu.shape, np.uint8)
    if tree is None:
        notes.append("airway tree: too small to analyse")
        return AirwayTree(tree_mask, lobar, threshold_hu=t_hu, notes=notes)
    roots = _identify(tree, notes)
    node_lobe = np.zeros(len(tree.parent), np.uint8)
    # upper/lower first, then the middle lobe (carved out of the lower subtree)
    for lb in sorted(roots, key=lambda k: k == Lobe.RIGHT_MIDDLE):
        for r in roots[lb]:
            node_lobe[_subtree_nodes(tree, r)] = lb
    vox_lobe = node_lobe[tree.node_of]
    lobar[tuple(tree.coords.T)] = vox_lobe
    identified = set()
    for lb in roots:
        n = int((vox_lobe == lb).sum())
        if n >= MIN_LOBAR_VOXELS:
            identified.add(lb)
        else:
            notes.append(f"airway tree: {lb.name.lower()} bronchus subtree too small ({n} voxels)")
            lobar[lobar == lb] = 0
    notes.append(f"airway tree: {tree_mask.sum() * voxel_ml:.0f} ml at {t_hu:.0f} HU, "
                 f"lobar bronchi found: {', '.join(sorted(lb.name.lower() for lb in identified)) or 'none'}")
    return AirwayTree(tree_mask, lobar, identified, t_hu, notes)

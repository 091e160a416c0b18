"""Load one single-frame CT series from DICOM files into an HU volume with checked geometry.

``load_series(paths)`` reads every file's header first (without pixel data), refuses
anything that is not one regular axial-ish CT volume, sorts the slices along the slice
normal, and only then decodes pixel data slice by slice straight into one preallocated
array. Every refusal is a :class:`VolumeError` whose message names the files or slice
positions concerned and the reason (bad input: no retry, nothing partial is sent).

Checks, in order:

* every file is DICOM, Modality CT, single-frame, monochrome, one sample per pixel, with
  pixel data; Enhanced / Legacy Converted Enhanced CT (multi-frame) is refused as
  "not supported yet";
* one study, one series, one frame of reference (UIDs present and well formed);
* same Image Orientation (Patient), Pixel Spacing, Rows and Columns on every slice;
* rescale: Rescale Slope/Intercept absent means identity (CT); Rescale Type, when
  present, must be ``HU`` or ``US``;
* no gantry tilt: Gantry/Detector Tilt absent or 0, and the offsets between successive
  Image Position (Patient) values parallel to the slice normal (row x column cosines);
* no duplicate positions, no duplicate SOP Instance UIDs;
* regular spacing along the normal: every step within ``max(1 % of the nominal spacing,
  0.05 mm)`` of the nominal (median) step; a gap is reported with its positions in mm;
* pixel data decodable (transfer syntax named when it is not).

Slices are sorted by the dot product of Image Position (Patient) with the slice normal,
never by z alone, and no slice is ever dropped.

Canonical orientation: the sorted stack (slice k, row r, column c) is then reoriented by an
axis permutation and flips (no resampling) to the canonical LPS layout of
``segmentation.types.Volume``: ``hu[z, y, x]`` with x toward the patient's Left, y toward
Posterior, z toward Superior. Each stack axis goes to the patient axis it is nearest to
(the permutation maximising the summed |cosines|); a series whose axes are more than
``OBLIQUE_MAX_DEG`` from every patient axis is refused. Head-first or feet-first, supine or
prone, mirrored or transposed in-plane layouts, sagittal and coronal stacks all give the same
canonical array for the same anatomy. ``LoadedSeries.to_source`` maps a canonical mask back to
the source stack (so DICOM-SEG frames are written on the source slices, in their pixel layout)
and ``to_canonical`` maps a source-stack array (e.g. a SEG read back) to the canonical grid.
``source_datasets``, ``paths``, ``sop_instance_uids``, ``slice_positions_mm`` and
``image_positions_patient`` stay in the source stack's slice order (k). HU values are kept as stored after the
rescale (padding such as -2048 or -3024 outside the field of view stays as it is).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from node.uids import InvalidUID, sanitize_uid
from segmentation.types import Volume

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"

#: Relative and absolute tolerance on slice steps (the larger one applies).
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL_MM = 0.05
#: Tolerance on direction cosines (orientation equality, unit length, orthogonality).
ORIENTATION_TOL = 1e-4
#: Tolerance on pixel spacing equality between slices, in mm.
PIXEL_SPACING_TOL_MM = 1e-4
#: Largest allowed in-plane drift between successive slice origins, in mm per slice step
#: relative to the step (tan of the tilt angle): 0.001 ~ 0.06 degrees.
TILT_TOL = 1e-3
#: Largest angle between a stack axis and the patient axis it is mapped to, in degrees.
OBLIQUE_MAX_DEG = 30.0
#: Fewest slices that make a volume.
MIN_SLICES = 2

_ALLOWED_RESCALE_TYPES = {"HU", "US"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}


class VolumeError(Exception):
    """The files are not one loadable CT volume; the message says which files and why."""


@dataclass(frozen=True)
class Reorientation:
    """How the source stack (k, r, c) becomes the canonical (z, y, x) array.

    axes: canonical axis a is source axis ``axes[a]`` (0 = slice k, 1 = row r, 2 = column c).
    flips: canonical axis a is reversed after the transpose.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, source: np.ndarray) -> np.ndarray:
        """A (k, r, c[, ...]) source-stack array as a canonical (z, y, x[, ...]) view."""
        extra = tuple(range(3, source.ndim))
        out = np.transpose(source, self.axes + extra)
        flip_axes = tuple(a for a in range(3) if self.flips[a])
        return np.flip(out, flip_axes) if flip_axes else out

    def to_source(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical (z, y, x[, ...]) array as a source-stack (k, r, c[, ...]) view."""
        flip_axes = tuple(a for a in range(3) if self.flips[a])
        out = np.flip(canonical, flip_axes) if flip_axes else canonical
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return np.transpose(out, inverse + tuple(range(3, canonical.ndim)))

    def source_shape(self, canonical_shape: tuple[int, ...]) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for a, src in enumerate(self.axes):
            shape[src] = canonical_shape[a]
        return tuple(shape)


#: Patient axis (index into an LPS (x, y, z) vector) of canonical array axes z, y, x.
_CANONICAL_LPS_AXIS = (2, 1, 0)


def choose_reorientation(row_cosines, column_cosines, normal) -> tuple[Reorientation, np.ndarray]:
    """(Reorientation, canonical direction) for a stack with these DICOM direction cosines.

    The stack's axes are (slice k along ``normal``, row r along ``column_cosines``, column c
    along ``row_cosines``), all in LPS (x, y, z). The direction returned is the 3x3 matrix of
    ``segmentation.types.Volume.direction``: row a = canonical axis a in (S, P, L) components.
    Raises VolumeError when an axis is more than OBLIQUE_MAX_DEG from its patient axis.
    """
    source_dirs = np.array([normal, column_cosines, row_cosines], dtype=np.float64)
    best, best_score = None, -1.0
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        score = sum(abs(source_dirs[perm[a], _CANONICAL_LPS_AXIS[a]]) for a in range(3))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    cosines = [source_dirs[best[a], _CANONICAL_LPS_AXIS[a]] for a in range(3)]
    worst = float(np.degrees(np.arccos(min(1.0, min(abs(c) for c in cosines)))))
    if worst > OBLIQUE_MAX_DEG:
        raise VolumeError(
            f"oblique acquisition: an image axis is {worst:.1f} degrees from the nearest patient "
            f"axis (at most {OBLIQUE_MAX_DEG:g} supported; Image Orientation (Patient) "
            f"{tuple(round(float(v), 4) for v in (*row_cosines, *column_cosines))}); "
            "resample to an axial grid first"
        )
    flips = tuple(bool(c < 0) for c in cosines)
    direction = np.array([
        (-1.0 if flips[a] else 1.0) * source_dirs[best[a]][[2, 1, 0]] for a in range(3)
    ])
    return Reorientation(axes=tuple(int(i) for i in best), flips=flips), direction


@dataclass(frozen=True, eq=False)
class LoadedSeries:
    """One CT series as an HU volume plus what the DICOM outputs need.

    volume: HU (int16 when every slice rescales to integers within int16, else float32) in
        the canonical LPS layout (z, y, x) of segmentation.types.Volume, with its spacing,
        direction and origin.
    reorientation: how the source stack maps to ``volume.hu`` (see ``to_source``).
    source_datasets: the slice headers (no Pixel Data) in source stack order k (increasing
        position along the slice normal).
    paths: the files in source stack order.
    slice_positions_mm: position of each slice along the normal (dot(IPP, normal)), k order.
    image_positions_patient: (n, 3) Image Position (Patient) of each slice, k order.
    image_orientation_patient: the six direction cosines shared by all slices.
    slice_normal: unit normal (row cosines x column cosines).
    """

    volume: Volume
    source_datasets: list[Dataset]
    paths: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    slice_positions_mm: tuple[float, ...]
    image_positions_patient: np.ndarray
    image_orientation_patient: tuple[float, ...]
    slice_normal: tuple[float, float, float]
    transfer_syntax_uids: frozenset[str]
    reorientation: Reorientation = Reorientation((0, 1, 2), (False, False, False))

    @property
    def n_slices(self) -> int:
        return len(self.source_datasets)

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of the source stack."""
        return self.reorientation.source_shape(self.volume.hu.shape)

    def to_source(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical (z, y, x[, ...]) array on the source stack (k, r, c[, ...]), a view."""
        if canonical.shape[:3] != self.volume.hu.shape:
            raise ValueError(f"array {canonical.shape} is not on the volume grid {self.volume.hu.shape}")
        return self.reorientation.to_source(canonical)

    def to_canonical(self, source: np.ndarray) -> np.ndarray:
        """A source-stack (k, r, c[, ...]) array on the canonical grid (z, y, x[, ...]), a view."""
        if source.shape[:3] != self.source_shape:
            raise ValueError(f"array {source.shape} is not on the source stack {self.source_shape}")
        return self.reorientation.to_canonical(source)


def load_series(paths: Sequence[Path], *, require_valid_uids: bool = True) -> LoadedSeries:
    """Load the single-frame CT files in ``paths`` (any order) as one checked HU volume.

    require_valid_uids: False only for reading files directly for evaluation (e.g. the
        COVID-CT-MD samples, whose UIDs are UUID strings and whose SOP Instance UIDs are
        empty): UIDs are then taken as stored, empty SOP Instance UIDs are allowed and not
        checked for duplicates (duplicate slice positions still are). Such a series must
        never be turned into DICOM outputs; the network receiver keeps refusing it.
    Raises VolumeError for bad input (message names the files/slices and the reason).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise VolumeError("no files given")
    headers = [_read_header(p) for p in paths]
    for path, ds in zip(paths, headers):
        _check_single_frame_ct(path, ds)

    strict = require_valid_uids
    study_uid = _one_uid(paths, headers, "StudyInstanceUID", "Study Instance UID", "studies",
                         strict)
    series_uid = _one_uid(paths, headers, "SeriesInstanceUID", "Series Instance UID", "series",
                          strict)
    for_uid = _one_uid(paths, headers, "FrameOfReferenceUID", "Frame of Reference UID",
                       "frames of reference", strict)
    sop_uids = [_uid(p, ds, "SOPInstanceUID", "SOP Instance UID", strict)
                for p, ds in zip(paths, headers)]
    named = [(p, u) for p, u in zip(paths, sop_uids) if strict or u]
    _check_unique_sops([p for p, _ in named], [u for _, u in named])
    if len(paths) < MIN_SLICES:
        raise VolumeError(
            f"series {series_uid} has {len(paths)} slice(s); at least {MIN_SLICES} are needed"
        )

    orientation = _common_orientation(paths, headers)
    pixel_spacing = _common_pixel_spacing(paths, headers)
    rows, cols = _common_matrix(paths, headers)
    _check_gantry_tilt_tag(paths, headers)

    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    ipps = np.array([_ipp(p, ds) for p, ds in zip(paths, headers)], dtype=np.float64)
    positions = ipps @ normal
    order = np.argsort(positions, kind="stable")
    positions, ipps = positions[order], ipps[order]
    s_paths = [paths[i] for i in order]
    s_headers = [headers[i] for i in order]
    s_sops = [sop_uids[i] for i in order]

    _check_duplicates(s_paths, positions)
    _check_tilt(s_paths, ipps, normal)
    z_spacing = _check_regular_spacing(s_paths, positions)

    reorientation, direction = choose_reorientation(row_cos, col_cos, normal)
    hu, transfer_syntaxes = _decode_all(s_paths, s_headers, rows, cols)
    source_spacing = (z_spacing, pixel_spacing[0], pixel_spacing[1])
    if not reorientation.is_identity:
        hu = np.ascontiguousarray(reorientation.to_canonical(hu))
    # Source index of canonical voxel (0, 0, 0), then its patient position.
    first = [0, 0, 0]
    for a, src in enumerate(reorientation.axes):
        if reorientation.flips[a]:
            first[src] = (len(s_paths), rows, cols)[src] - 1
    origin_lps = (ipps[first[0]] + first[1] * pixel_spacing[0] * col_cos
                  + first[2] * pixel_spacing[1] * row_cos)
    volume = Volume(
        hu=hu,
        spacing_mm=tuple(float(source_spacing[src]) for src in reorientation.axes),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
        origin_mm=(float(origin_lps[2]), float(origin_lps[1]), float(origin_lps[0])),
    )
    logger.info("loaded series %s: %d slices %dx%d, spacing %s mm, %s, canonical axes %s flips %s",
                series_uid, len(s_paths), rows, cols, volume.spacing_mm, hu.dtype,
                reorientation.axes, reorientation.flips)
    return LoadedSeries(
        volume=volume,
        source_datasets=s_headers,
        paths=tuple(s_paths),
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=for_uid,
        sop_instance_uids=tuple(s_sops),
        slice_positions_mm=tuple(float(x) for x in positions),
        image_positions_patient=ipps,
        image_orientation_patient=tuple(float(v) for v in orientation),
        slice_normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        transfer_syntax_uids=frozenset(transfer_syntaxes),
        reorientation=reorientation,
    )


# --- headers -------------------------------------------------------------------------------


def _read_header(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for _ in ds.iterall():  # pydicom decodes lazily: a bad VR or value raises here, not later
            pass
    except InvalidDicomError as exc:
        raise VolumeError(f"{path.name}: not a DICOM file ({exc})") from exc
    except FileNotFoundError as exc:
        raise VolumeError(f"{path}: file not found") from exc
    except Exception as exc:  # truncated / corrupt headers raise assorted errors
        raise VolumeError(f"{path.name}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    if "SOPClassUID" not in ds and "SOPClassUID" not in getattr(ds, "file_meta", Dataset()):
        raise VolumeError(f"{path.name}: not a DICOM image (no SOP Class UID)")
    return ds


def _sop_class(ds: Dataset) -> str:
    value = str(ds.get("SOPClassUID", "") or "").strip()
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    return value


def _check_single_frame_ct(path: Path, ds: Dataset) -> None:
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "CT":
        shown = modality or "missing"
        raise VolumeError(f"{path.name}: Modality is {shown}, only CT is analysed")
    sop_class = _sop_class(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if sop_class in (ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE) or n_frames > 1:
        name = UID(sop_class).name if sop_class else "multi-frame image"
        raise VolumeError(
            f"{path.name}: {name} ({n_frames} frames) is not supported yet; "
            "send the series as single-frame CT Image Storage"
        )
    if sop_class and sop_class != CT_IMAGE_STORAGE:
        raise VolumeError(f"{path.name}: SOP class {UID(sop_class).name} is not CT Image Storage")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric not in _MONOCHROME:
        raise VolumeError(
            f"{path.name}: Photometric Interpretation {photometric or 'missing'} is not "
            "monochrome; HU cannot be derived"
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(f"{path.name}: Samples per Pixel is {ds.SamplesPerPixel}, expected 1")
    rescale_type = str(ds.get("RescaleType", "") or "").strip()
    if rescale_type and rescale_type not in _ALLOWED_RESCALE_TYPES:
        raise VolumeError(f"{path.name}: Rescale Type {rescale_type} is not HU")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "Rows", "Columns"):
        if ds.get(keyword) in (None, ""):
            raise VolumeError(f"{path.name}: {keyword} is missing; geometry unknown")


def _uid(path: Path, ds: Dataset, keyword: str, what: str, strict: bool = True) -> str:
    if not strict:
        return str(ds.get(keyword) or "").strip().rstrip("\x00").strip()
    try:
        return sanitize_uid(ds.get(keyword), what)
    except InvalidUID as exc:
        raise VolumeError(f"{path.name}: {exc}") from exc


def _one_uid(paths: list[Path], headers: list[Dataset], keyword: str, what: str,
             plural: str, strict: bool = True) -> str:
    values: dict[str, list[str]] = {}
    for path, ds in zip(paths, headers):
        values.setdefault(_uid(path, ds, keyword, what, strict), []).append(path.name)
    if len(values) > 1:
        parts = "; ".join(
            f"{uid}: {len(names)} file(s), e.g. {', '.join(names[:3])}" for uid, names in values.items()
        )
        raise VolumeError(f"mixed input: {len(values)} {plural} ({what}) in one series: {parts}")
    return next(iter(values))


def _check_unique_sops(paths: list[Path], sop_uids: list[str]) -> None:
    seen: dict[str, Path] = {}
    for path, uid in zip(paths, sop_uids):
        if uid in seen:
            raise VolumeError(
                f"duplicate SOP Instance UID {uid} in {seen[uid].name} and {path.name}"
            )
        seen[uid] = path


def _floats(path: Path, ds: Dataset, keyword: str, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in ds.get(keyword))
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{path.name}: {keyword} is not numeric ({exc})") from exc
    if len(values) != n or not all(np.isfinite(values)):
        raise VolumeError(f"{path.name}: {keyword} must be {n} finite numbers, got {values}")
    return values


def _ipp(path: Path, ds: Dataset) -> tuple[float, ...]:
    return _floats(path, ds, "ImagePositionPatient", 3)


def _common_orientation(paths: list[Path], headers: list[Dataset]) -> tuple[float, ...]:
    first = np.array(_floats(paths[0], headers[0], "ImageOrientationPatient", 6))
    row, col = first[:3], first[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(row @ col)) > 1e-3):
        raise VolumeError(
            f"{paths[0].name}: Image Orientation (Patient) {tuple(first)} is not two orthogonal "
            "unit vectors"
        )
    for path, ds in zip(paths[1:], headers[1:]):
        other = np.array(_floats(path, ds, "ImageOrientationPatient", 6))
        if np.max(np.abs(other - first)) > ORIENTATION_TOL:
            raise VolumeError(
                f"different orientations in one series: {paths[0].name} has {tuple(first)}, "
                f"{path.name} has {tuple(other)}"
            )
    return tuple(float(v) for v in first)


def _common_pixel_spacing(paths: list[Path], headers: list[Dataset]) -> tuple[float, float]:
    first = _floats(paths[0], headers[0], "PixelSpacing", 2)
    if min(first) <= 0:
        raise VolumeError(f"{paths[0].name}: Pixel Spacing {first} is not positive")
    for path, ds in zip(paths[1:], headers[1:]):
        other = _floats(path, ds, "PixelSpacing", 2)
        if max(abs(a - b) for a, b in zip(first, other)) > PIXEL_SPACING_TOL_MM:
            raise VolumeError(
                f"different pixel spacings in one series: {paths[0].name} has {first} mm, "
                f"{path.name} has {other} mm"
            )
    return float(first[0]), float(first[1])


def _common_matrix(paths: list[Path], headers: list[Dataset]) -> tuple[int, int]:
    first = (int(headers[0].Rows), int(headers[0].Columns))
    for path, ds in zip(paths[1:], headers[1:]):
        other = (int(ds.Rows), int(ds.Columns))
        if other != first:
            raise VolumeError(
                f"different image sizes in one series: {paths[0].name} is {first[0]}x{first[1]}, "
                f"{path.name} is {other[0]}x{other[1]} (rows x columns)"
            )
    return first


def _check_gantry_tilt_tag(paths: list[Path], headers: list[Dataset]) -> None:
    for path, ds in zip(paths, headers):
        value = ds.get("GantryDetectorTilt")
        if value in (None, ""):
            continue
        try:
            tilt = float(value)
        except (TypeError, ValueError) as exc:
            raise VolumeError(f"{path.name}: Gantry/Detector Tilt {value!r} is not numeric") from exc
        if abs(tilt) > 1e-6:
            raise VolumeError(
                f"{path.name}: Gantry/Detector Tilt is {tilt} degrees; tilted acquisitions are "
                "not supported (resample to an orthogonal grid first)"
            )


# --- geometry along the normal -------------------------------------------------------------


def _check_duplicates(paths: list[Path], positions: np.ndarray) -> None:
    steps = np.diff(positions)
    for i in np.flatnonzero(steps < SPACING_ABS_TOL_MM):
        raise VolumeError(
            f"duplicate slice position {positions[i]:.3f} mm along the slice normal: "
            f"{paths[i].name} and {paths[i + 1].name}"
        )


def _check_tilt(paths: list[Path], ipps: np.ndarray, normal: np.ndarray) -> None:
    offsets = np.diff(ipps, axis=0)
    along = offsets @ normal
    across = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    ratio = across / np.abs(along)
    worst = int(np.argmax(ratio))
    if ratio[worst] > TILT_TOL:
        angle = float(np.degrees(np.arctan(ratio[worst])))
        raise VolumeError(
            f"gantry tilt or sheared stack: slice origins drift {across[worst]:.3f} mm across the "
            f"slice normal over a {abs(along[worst]):.3f} mm step ({angle:.2f} degrees) between "
            f"{paths[worst].name} and {paths[worst + 1].name}; not supported"
        )


def _check_regular_spacing(paths: list[Path], positions: np.ndarray) -> float:
    steps = np.diff(positions)
    nominal = float(np.median(steps))
    tolerance = max(SPACING_REL_TOL * nominal, SPACING_ABS_TOL_MM)
    bad = np.flatnonzero(np.abs(steps - nominal) > tolerance)
    if bad.size:
        i = int(bad[0])
        missing = steps[i] / nominal - 1
        hint = (f", about {round(missing)} slice(s) missing"
                if steps[i] > nominal and round(missing) >= 1 else "")
        more = f" ({bad.size} irregular steps in all)" if bad.size > 1 else ""
        raise VolumeError(
            f"irregular slice spacing: gap of {steps[i]:.3f} mm between slice positions "
            f"{positions[i]:.3f} mm ({paths[i].name}) and {positions[i + 1]:.3f} mm "
            f"({paths[i + 1].name}), expected {nominal:.3f} mm +/- {tolerance:.3f}{hint}{more}"
        )
    # Mean step over the whole stack: the best estimate of the grid spacing.
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


# --- pixel data ----------------------------------------------------------------------------


def _rescale(path: Path, ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) if ds.get("RescaleSlope") not in (None, "") else 1)
        intercept = float(
            ds.get("RescaleIntercept", 0) if ds.get("RescaleIntercept") not in (None, "") else 0
        )
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{path.name}: Rescale Slope/Intercept not numeric ({exc})") from exc
    if not np.isfinite(slope) or not np.isfinite(intercept) or slope == 0:
        raise VolumeError(f"{path.name}: unusable rescale slope {slope} / intercept {intercept}")
    return slope, intercept


def _decode_all(paths: list[Path], headers: list[Dataset], rows: int,
                cols: int) -> tuple[np.ndarray, set[str]]:
    rescales = [_rescale(p, ds) for p, ds in zip(paths, headers)]
    integer = all(s == int(s) and i == int(i) for s, i in rescales)
    out = np.empty((len(paths), rows, cols), dtype=np.int16 if integer else np.float32)
    syntaxes: set[str] = set()
    for k, (path, (slope, intercept)) in enumerate(zip(paths, rescales)):
        stored, syntax = _decode_one(path, rows, cols)
        syntaxes.add(syntax)
        if integer:
            hu = stored.astype(np.int32, copy=False)
            if slope != 1:
                hu = hu * int(slope)
            if intercept:
                hu = hu + int(intercept)
            lo, hi = int(hu.min()), int(hu.max())
            if lo < -32768 or hi > 32767:
                # Rare: integer rescale outside int16. Switch the whole volume to float32.
                out = out.astype(np.float32)
                integer = False
                out[k] = hu
                continue
            out[k] = hu
        else:
            out[k] = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out, syntaxes


def _decode_one(path: Path, rows: int, cols: int) -> tuple[np.ndarray, str]:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise VolumeError(f"{path.name}: unreadable on second read ({type(exc).__name__}: {exc})") from exc
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    syntax_name = UID(syntax).name if syntax else "unknown transfer syntax"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeError(f"{path.name}: no Pixel Data")
    if "PixelData" not in ds:
        raise VolumeError(f"{path.name}: float pixel data is not CT stored values")
    try:
        array = ds.pixel_array
    except Exception as exc:  # missing plugin, corrupt codestream, wrong length
        raise VolumeError(
            f"{path.name}: pixel data cannot be decoded ({syntax_name}, {syntax}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if array.shape != (rows, cols):
        raise VolumeError(
            f"{path.name}: decoded pixel array has shape {array.shape}, expected ({rows}, {cols})"
        )
    return array, syntax

"""Finding the images of a Kaggle-layout folder and splitting them by patient.

Several radiographs can belong to one patient; a split that ignores that leaks the
patient's anatomy from train into validation and inflates every metric. Splits here
are patient-grouped, stratified by class, seeded, and saved as a manifest.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.data.allowed_roots import allowed_data_roots, check_data_root, is_allowed
from cxr_core.data.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES
from cxr_core.errors import UserError
from cxr_core.settings import CLASSES

SPLITS = ("train", "val", "test")

_PNEUMONIA_ID = re.compile(r"^person(\d+)_", re.IGNORECASE)
_NORMAL_ID = re.compile(r"^(?:NORMAL\d*-)?IM-(\d+)-", re.IGNORECASE)
_SYNTHETIC_ID = re.compile(r"^synth-(\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One image: path relative to the dataset root, label (1 = pneumonia), patient id."""

    path: str
    label: int
    patient: str


@dataclass
class DatasetIndex:
    """All images of a dataset folder, by the split folder they were found in."""

    root: Path
    samples: dict[str, list[Sample]]
    notes: list[str] = field(default_factory=list)

    def all_samples(self) -> list[Sample]:
        return [s for split in self.samples.values() for s in split]


def patient_id(file_name: str) -> str:
    """Patient id from a Kermany file name; unknown patterns count as their own patient.

    ``person1946_bacteria_4874.jpeg`` -> ``P1946``; ``IM-0115-0001.jpeg`` and
    ``NORMAL2-IM-0115-0001.jpeg`` -> ``N0115`` (grouped together: merging can only make
    a split stricter, never leakier).
    """
    stem = Path(file_name).stem
    if m := _PNEUMONIA_ID.match(stem):
        return f"P{int(m.group(1))}"
    if m := _NORMAL_ID.match(stem):
        return f"N{int(m.group(1))}"
    if m := _SYNTHETIC_ID.match(stem):
        return f"S{int(m.group(1))}"
    return f"F:{stem}"


def _find_root(root: Path) -> Path:
    """Accept ``chest_xray/`` and the doubly nested ``chest_xray/chest_xray/`` of the zip."""
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is a file, expected a folder with train/ (and val/, test/)")
    for candidate in (root, root / "chest_xray", root / "chest_xray" / "chest_xray"):
        if _child(candidate, "train") is not None:
            return candidate
    raise UserError(
        f"{root}: no train/ folder found; expected the Kaggle layout "
        "<root>/train/{NORMAL,PNEUMONIA}/*.jpeg"
    )


def _child(folder: Path, name: str) -> Path | None:
    """A sub-folder matched case-insensitively (``normal``, ``Normal`` ...)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        # os.path.isdir, unlike DirEntry.is_dir, answers False for a symlink loop.
        if entry.name.lower() == name.lower() and os.path.isdir(entry.path):
            return Path(entry.path)
    return None


def _image_files(folder: Path, roots: list[Path] | None) -> tuple[list[Path], int]:
    """Image files below ``folder`` and how many image-named entries were unusable.

    Symlinked folders are not followed (loops are harmless); a broken or looping link, or
    one leading outside the allowed data roots, is counted instead of listed.
    """
    suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
    found, bad = [], 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            if not name.lower().endswith(suffixes):
                continue
            path = Path(dirpath) / name
            if os.path.isfile(path) and is_allowed(path, roots):
                found.append(path)
            else:
                bad += 1
    return sorted(found), bad


def _class_samples(folder: Path, base: Path, roots: list[Path] | None) -> tuple[list[Sample], int]:
    """The images of ``folder/{NORMAL,PNEUMONIA}`` (any case), paths relative to ``base``,
    and how many image-named entries were unusable."""
    found, unusable = [], 0
    for label, cls in enumerate(CLASSES):
        class_dir = _child(folder, cls)
        files, bad = _image_files(class_dir, roots) if class_dir else ([], 0)
        unusable += bad
        found += [Sample(str(f.relative_to(base)), label, patient_id(f.name)) for f in files]
    return found, unusable


def scan(root: str | Path) -> DatasetIndex:
    """Index a Kaggle-layout folder; raise :class:`UserError` for an unusable one."""
    base = _find_root(check_data_root(root))
    roots = allowed_data_roots()
    samples: dict[str, list[Sample]] = {}
    notes = []
    unusable = 0
    for split in SPLITS:
        split_dir = _child(base, split)
        if split_dir is None:
            notes.append(f"no {split}/ folder")
            continue
        found, bad = _class_samples(split_dir, base, roots)
        unusable += bad
        if found:
            samples[split] = found
    if unusable:
        notes.append(
            f"ignored {unusable} broken or looping link(s), or links leading outside the "
            "allowed data folders"
        )
    train = samples.get("train", [])
    counts = Counter(s.label for s in train)
    for label, cls in enumerate(CLASSES):
        if counts[label] == 0:
            raise UserError(
                f"{base}: train/{cls}/ is missing or holds no .jpeg/.jpg/.png/.dcm images; "
                "both classes are needed"
            )
    unknown = sum(s.patient.startswith("F:") for s in train)
    if unknown:
        notes.append(
            f"{unknown} train file names carry no patient id; each is treated as its own patient"
        )
    return DatasetIndex(base, samples, notes)


def labelled_images(root: str | Path, split: str = "test") -> tuple[Path, list[Sample], str]:
    """The labelled images to score a model on, from any of the layouts a user may have:
    a Kaggle-layout root (``split``/NORMAL, ``split``/PNEUMONIA; with or without train/,
    the zip's nested chest_xray/ too), or a folder holding NORMAL/ and PNEUMONIA/ itself.

    Returns the folder the sample paths are relative to, the samples (both classes not
    required: a set of normal films alone can still be scored) and a readable name.
    """
    given = check_data_root(root)
    if not given.is_dir():
        raise UserError(f"{root}: no such folder")
    roots = allowed_data_roots()
    for base in (given, given / "chest_xray", given / "chest_xray" / "chest_xray"):
        folder = _child(base, split) if base.is_dir() else None
        if folder is not None:
            samples, _ = _class_samples(folder, base, roots)
            if samples:
                return base, samples, f"{split}/ of {base} ({len(samples)} images)"
    samples, _ = _class_samples(given, given, roots)
    if samples:
        return given, samples, f"{given} ({len(samples)} images)"
    raise UserError(
        f"{root}: no labelled images found; expected {split}/NORMAL and {split}/PNEUMONIA, "
        "or NORMAL/ and PNEUMONIA/ directly, holding .jpeg/.jpg/.png/.dcm files"
    )


UNLABELLED = -1
"""The label of a film whose class is not known (or not to be used)."""


def site_images(root: str | Path, split: str = "test") -> tuple[Path, list[Sample], str]:
    """The films of another site, their labels never used: a labelled folder in any layout
    :func:`labelled_images` takes (the same paths, so the set keeps the fingerprint a
    labelled evaluation of it has), else every image below ``root``. Every sample carries
    :data:`UNLABELLED`."""
    base = check_data_root(root)
    if not base.is_dir():
        raise UserError(f"{root}: no such folder")
    try:
        base, samples, name = labelled_images(base, split)
    except UserError:
        if any(_child(b, "train") for b in (base, base / "chest_xray") if b.is_dir()):
            raise UserError(
                f"{root}: a Kaggle-layout folder without {split}/ films; name the site's "
                "folder itself, or another --split"
            ) from None
        files, _ = _image_files(base, allowed_data_roots())
        if not files:
            raise UserError(
                f"{root}: no images found (.jpeg/.jpg/.png/.dcm files, in any sub-folders)"
            ) from None
        samples = [Sample(str(f.relative_to(base)), UNLABELLED, patient_id(f.name)) for f in files]
        return base, samples, f"{base} ({len(samples)} images)"
    return base, [Sample(s.path, UNLABELLED, s.patient) for s in samples], name


def _carve(
    samples: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    """Move whole patients, class by class, until ``fraction`` of each class's images moved."""
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient, []).append(s)
    taken: set[str] = set()
    for label in (0, 1):
        # A patient's class is that of most of its images (in Kermany all agree).
        patients = sorted(
            p
            for p, group in by_patient.items()
            if round(np.mean([s.label for s in group])) == label
        )
        goal = fraction * sum(s.label == label for s in samples)
        moved = 0
        for p in rng.permutation(np.array(patients, dtype=object)) if patients else []:
            if moved >= goal:
                break
            taken.add(p)
            moved += len(by_patient[p])
    kept = [s for s in samples if s.patient not in taken]
    carved = [s for s in samples if s.patient in taken]
    return kept, carved


@dataclass
class SplitManifest:
    """Which images are used for what; saved in every run so the split can be audited."""

    seed: int
    val_fraction: float
    test_fraction: float
    splits: dict[str, list[Sample]]
    derived: dict[str, str]

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "derived": self.derived,
            "counts": self.counts(),
            "splits": {k: [asdict(s) for s in v] for k, v in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitManifest:
        splits = {k: [Sample(**s) for s in v] for k, v in data["splits"].items()}
        return cls(
            data["seed"], data["val_fraction"], data["test_fraction"], splits, data["derived"]
        )

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, items in self.splits.items():
            c = Counter(s.label for s in items)
            out[name] = {
                "NORMAL": c[0],
                "PNEUMONIA": c[1],
                "patients": len({s.patient for s in items}),
            }
        return out

    def without(self, paths: set[str]) -> SplitManifest:
        """The same split minus unreadable files (which are reported, not hidden)."""
        kept = {k: [s for s in v if s.path not in paths] for k, v in self.splits.items()}
        return SplitManifest(self.seed, self.val_fraction, self.test_fraction, kept, self.derived)

    @property
    def test_split(self) -> str:
        """``test`` for the official split, ``internal_test`` when carved from train."""
        return "test" if "test" in self.splits else "internal_test"


def make_splits(
    index: DatasetIndex,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_images: int | None = None,
) -> SplitManifest:
    """Patient-grouped, stratified, seeded splits. Same files + same seed = same split.

    Validation is always carved from train (the official 16-image val/ is kept as
    ``official_val``, an extra report, never the selection set). Without a test/ folder an
    ``internal_test`` split is carved from train too. ``max_images`` draws a
    patient-grouped subset of train first (quick runs, tests).
    """
    if not 0 < val_fraction < 0.5 or not 0 <= test_fraction < 0.5:
        raise UserError("val fraction must be in (0, 0.5) and test fraction in [0, 0.5)")

    rng = np.random.default_rng(seed)
    train = list(index.samples.get("train", []))
    derived = {}
    if max_images is not None and max_images < len(train):
        _, train = _carve(train, max_images / len(train), rng)
        derived["subset"] = f"patient-grouped subset of train: {len(train)} images"
    splits: dict[str, list[Sample]] = {}
    remaining = 1.0
    if "test" in index.samples:
        splits["test"] = list(index.samples["test"])
        derived["test"] = "official test/ folder"
    elif test_fraction > 0:
        train, splits["internal_test"] = _carve(train, test_fraction, rng)
        remaining -= test_fraction
        derived["internal_test"] = (
            f"no test/ folder: {test_fraction:.0%} of train patients, grouped by patient"
        )
    train, splits["val"] = _carve(train, val_fraction / remaining, rng)
    derived["val"] = f"{val_fraction:.0%} of train patients, grouped by patient and stratified"
    splits["train"] = train
    if "val" in index.samples:
        splits["official_val"] = list(index.samples["val"])
        derived["official_val"] = "official val/ folder (too small to select on; reported only)"
    for name in ("train", "val"):
        labels = {s.label for s in splits[name]}
        if labels != {0, 1}:
            raise UserError(
                f"the {name} split has only one class after carving; the dataset is too small"
            )
    return SplitManifest(seed, val_fraction, test_fraction, splits, derived)

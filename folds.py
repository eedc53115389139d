"""The cross-validated study's folds (SPEC 10): all labelled cases pooled, cut into K folds by case,
stratified by lesion volume and drawn anew for each seed, and a dataset root per (seed, fold).

    labelled_cases(root)                  -> every case of the train and val splits, pooled
    assign_folds(volumes, k, seed)        -> {case: fold}, stratified by lesion volume
    fold_dataset(out, cases, folds, s, f) -> OUT/folds/seedS/foldF/: train = the other folds, val = fold F
    write_folds(out, folds, volumes)      -> folds.csv, a row per (seed, case)

Every case is in exactly one fold per seed, so each (loss, seed) predicts every case once by a
model that did not train on it; two losses with the same seed share the folds (a paired
comparison); the seeds randomize the partition as well as the training (Bouthillier et al.
2021), so a verdict holds over partitions, not for one.
"""
import csv
from pathlib import Path

import numpy as np

import data
from plumbing import UsageError, atomic_dir, report, write_csv


def labelled_cases(root):
    """Every case of the train and val splits, pooled (a case id may appear once)."""
    cases, problems = {}, []
    for split in data.train_val_dirs(root):
        for case in data.discover(split):
            if case.base in cases:
                problems.append(f"{case.base}: in both splits")
            cases[case.base] = case
    if problems:
        raise data.DataError(report(root, problems))
    return [cases[k] for k in sorted(cases)]


def lesion_volume(case):
    """Lesion volume in mm^3 of a case's label file."""
    label, geometry = data.read_image(case.label)
    return float(np.count_nonzero(label) * np.prod(geometry.spacing))


def assign_folds(volumes, k, seed=0):
    """{case: fold} for one seed: cases ordered by lesion volume (lesion-free first, ties by id),
    cut into blocks of k, and each block's cases dealt to the k folds in an order drawn from
    ``seed``: each fold gets small, large and lesion-free cases alike, and each seed its own
    partition (SPEC 10: the seeds randomize the folds as well as the training)."""
    order = sorted(volumes, key=lambda c: (volumes[c], c))
    rng = np.random.default_rng([seed, k])
    folds = {}
    for start in range(0, len(order), k):
        block = order[start:start + k]
        for case, fold in zip(block, rng.permutation(k)[:len(block)]):
            folds[case] = int(fold)
    return folds


def fold_root(out, seed, fold):
    return out / "folds" / f"seed{seed}" / f"fold{fold}"


def fold_dataset(out, cases, folds, seed, fold):
    """OUT/folds/seedS/foldF/: a BONBID-HIE root whose train split is the other folds of seed S
    and whose val split is fold F, as symbolic links to the case files (made once, atomically)."""
    root = fold_root(out, seed, fold)
    if root.is_dir():
        return root

    def link(tmp):
        for case in cases:
            split = data.SPLITS[1] if folds[case.base] == fold else data.SPLITS[0]
            for kind in ("adc", "zadc", "label"):
                source = Path(getattr(case, kind)).resolve()
                target = tmp / split / data.FOLDERS[kind] / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
    return atomic_dir(root, link)


def read_folds(out):
    """{seed: {case: fold}} of a study's folds.csv."""
    folds = {}
    with open(out / "folds.csv") as fh:
        for r in csv.DictReader(fh):
            if "seed" not in r:
                raise UsageError(f"{out / 'folds.csv'}: folds from before they were drawn per seed (no seed column); "
                                 f"use another --out")
            folds.setdefault(int(r["seed"]), {})[r["case"]] = int(r["fold"])
    return folds


def write_folds(out, folds, volumes):
    """folds.csv, a row per (seed, case); the seeds an existing one has must agree (a study's folds
    never change under it), and new seeds are added."""
    path = out / "folds.csv"
    if path.exists():
        old = read_folds(out)
        if any(old[s] != folds[s] for s in set(old) & set(folds)):
            raise UsageError(f"{path}: this study's folds differ from the ones for the data and --folds asked "
                             f"(another dataset or K?); use another --out")
        folds = {**old, **folds}
    write_csv(path, [{"seed": s, "case": c, "fold": f, "lesion_mm3": f"{volumes[c]:.1f}"}
                     for s in sorted(folds) for c, f in sorted(folds[s].items()) if c in volumes],
              ["seed", "case", "fold", "lesion_mm3"])

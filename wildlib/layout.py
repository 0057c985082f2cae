"""What a run folder holds: each numbered notebook, the stage folder it writes under
``RUN_DIR/``, and the earlier stages it reads.  Here (a foundation module, no torch) so that the
runner, which must start in a second, and :mod:`wildlib.stages`, which the notebooks use, read one
definition: a re-run that needs a stage it does not make can be refused before a kernel starts, a
stage older than one it read can be called stale, and a base run's stages can be linked in.
"""

from __future__ import annotations

from pathlib import Path

EXPLORE, BASELINE, PRUNE, SHARE = "00_explore", "01_baseline", "02_prune", "03_share"
CHANNELS, EVALUATE = "04_prune_channels", "05_evaluate"
# The stages in run order: each notebook and the folder it writes, RUN_DIR/<folder>/.  A new stage
# is its notebook, its entries here (folder, inputs, record in wildlib.stages) and its files' names
# there; the generated results read it once wildlib.report has a paragraph for it (report.stage_lines).
STAGE_FOLDERS = {"00_explore_data": EXPLORE, "01_train_baseline": BASELINE, "02_prune_magnitude": PRUNE,
                 "03_weight_sharing": SHARE, "04_prune_channels": CHANNELS, "05_evaluate": EVALUATE}
# The earlier stages each stage reads (every stage reads 00's record of the data it explored)
STAGE_INPUTS = {EXPLORE: (), BASELINE: (EXPLORE,), PRUNE: (EXPLORE, BASELINE), SHARE: (EXPLORE, BASELINE, PRUNE),
                CHANNELS: (EXPLORE, BASELINE, PRUNE), EVALUATE: (EXPLORE, BASELINE, PRUNE, SHARE, CHANNELS)}
METRICS_FILE = "metrics.json"  # a stage's record, written last: its time is when the stage finished


def folder_of(notebook: str) -> str:
    """The stage folder of a notebook, by its stem (``02_prune_magnitude``) or number (``02``)."""
    for stem, folder in STAGE_FOLDERS.items():
        if notebook in (stem, stem[:2]):
            return folder
    raise KeyError(f"{notebook!r} is no notebook (known: {', '.join(STAGE_FOLDERS)})")


def finished_at(run, folder: str) -> float | None:
    """When stage ``folder`` of ``run`` last finished (its record's modification time), or None."""
    path = Path(run) / folder / METRICS_FILE
    return path.stat().st_mtime if path.is_file() else None


def missing_inputs(run, folder: str, made_first=()) -> list[str]:
    """The stages ``folder`` reads that ``run`` has not finished, leaving out ``made_first`` (stages
    this same run makes before it)."""
    return [s for s in STAGE_INPUTS[folder] if s not in made_first and finished_at(run, s) is None]


def stale_stages(run) -> dict[str, list[str]]:
    """Each finished stage of ``run`` that finished before a stage it read finished again, with
    those inputs: its results no longer follow from what is there (re-run it)."""
    out = {}
    for folder, inputs in STAGE_INPUTS.items():
        done = finished_at(run, folder)
        if done is None:
            continue
        newer = [s for s in inputs if (finished_at(run, s) or 0) > done]
        if newer:
            out[folder] = newer
    return out


def link_stage(run, base, folder: str) -> bool:
    """``run/folder`` as a link to ``base/folder`` (read, never written); True if made now, False if
    it was that link already.  Anything else there is refused, never replaced."""
    link, target = Path(run) / folder, Path(base) / folder
    if link.is_symlink() and link.resolve() == target.resolve():
        return False
    if link.exists() or link.is_symlink():
        raise FileExistsError(f"{link}: exists and is not a link to {target}")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=True)
    return True

"""The numbers the paper reports (AP50 on its real 'valid' split), for side-by-side tables.

One-shot global L1 pruning without fine-tuning, of the backbone alone and of the backbone and
ROI box head together (Muhawenayo & Gkioxari, 2021, table and figure).  Their code pruned the 48
bottleneck convolutions of res2-res5; their memory column is parameter-count arithmetic.
"""

from .classes import CLASSES

BASELINE_AP50 = 87.92
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9)
ONE_SHOT_AP50 = {
    "backbone": dict(zip(RATIOS, (87.97, 88.40, 88.15, 86.95, 83.48, 77.42, 60.24, 0.17))),
    "backbone+box_head": dict(zip(RATIOS, (87.72, 87.04, 83.60, 73.64, 61.18, 54.69, 33.12, 0.14))),
}


def applies(classes) -> bool:
    """The paper's numbers are a reference only for its own 13 classes.

    Introduced in notebook 00_explore_data."""
    return tuple(classes) == CLASSES


def table():
    """The paper's one-shot AP50 by pruning ratio (rows) and scope (columns), 0% being its baseline.
    Introduced in notebook 02_prune_magnitude, section "1 · One-shot global L1 pruning (the paper's experiment)"."""
    import pandas as pd

    df = pd.DataFrame(ONE_SHOT_AP50)
    df.index.name = "ratio"
    df.loc[0.0] = BASELINE_AP50
    return df.sort_index()


def beside(one_shot, baseline_ap50: float, with_paper: bool = True):
    """Our one-shot sweep (rows ``ratio``, ``scope``, ``AP50``) beside the paper's table, on the
    ratios we ran (0%: the baseline itself, ours and theirs); the paper's columns only where it
    has that ratio, never a row of ours that was not run.
    Introduced in notebook 05_evaluate, section "The paper's one-shot table beside ours"."""
    import pandas as pd

    ours = one_shot.pivot(index="ratio", columns="scope", values="AP50") if len(one_shot) else pd.DataFrame()
    ours.loc[0.0] = baseline_ap50
    ours = ours.sort_index().add_prefix("ours: ")
    if not with_paper:
        return ours.round(2)
    theirs = table().add_prefix("paper: ")
    return ours.join(theirs, how="left").round(2)

"""pairs: the judge's verdicts -> (prompt, chosen, rejected) pairs, every removal counted.

    rlaif filter --config configs/quickstart.yaml     # recompute pairs.parquet from judgments.parquet

    rank.py          pair source 1 (pairs.source rank|both): score or compare the round's candidates
    revise.py        pair source 2 (revise|both): critique-and-revise (Constitutional AI)
    compare.py       judgments -> one comparison per judged pair: both orders, scores, margins,
                     checklist weights (also read by the audit, calibration and the review page)
    filter.py        the filter stage: named filters in a fixed order -> pairs.parquet + pairs.card.json
    revise_pairs.py  the filter's side of revisions: revisions.parquet + confirmations -> comparisons
"""

"""evaluate: win rate and length-controlled win rate of a round's policy vs the SFT model.

The metrics (metrics.py) and the run report (report.py) are built; the stage that generates the
held-out answers and judges them is not yet wired to the CLI (`rlaif evaluate` says so).
"""

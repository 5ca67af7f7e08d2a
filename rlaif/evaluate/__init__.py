"""evaluate: round K's policy vs the SFT model on held-out prompts (stage.py), the metrics
(metrics.py: win rate, bootstrap interval, length-controlled win rate, length-hacking rule) and
the run report (report.py: RUN_DIR/report.md with PNG plots)."""

"""evaluate: round K's policy vs the SFT model on held-out prompts, judged like the training pairs.

    rlaif evaluate --config configs/quickstart.yaml
    rlaif report RUN_DIR

    stage.py         the stage: sample both models, judge both orders, write round-K/eval/eval.json
    metrics.py       win rate with a bootstrap interval, the length-controlled win rate, length hacking
    lc_anchor.py     the LC win rate anchored on two samples of the same model (the judge's length slope)
    checks.py        the user's own checks (rules, functions, code tests, reference answers), measured without
                     the judge; the same kinds score candidates for judge.backend=verifier
    runnable.py      checks that can be run: code tests in the sandbox (outcomes cached), reference matching
    curves.py        training curves from the trainer's logs
    pair_sources.py  pairs per source (rank, revise) for the report
    report.py        RUN_DIR/report.md with PNG plots
    compare.py       rlaif compare: runs side by side, OUT/compare.md with PNG plots
"""

"""trust: how far the judge's verdicts can be believed, measured before and after paying for them.

    rlaif calibrate --config configs/api-judge-rubric.yaml gold=gold.jsonl   # before a paid run

    audit.py      the bias audit of every judge run (position consistency, length preference,
                  invalid rate, checklist items), written to judge-report.json; the stage's gate reads it
    calibrate.py  the configured judge on human-labelled gold pairs: agreement, judge.min_agreement
    gold.py       reading gold pair files (JSONL, parquet, CSV, HF datasets; column mapping)
"""

"""judge: candidates -> audited verdicts -> preference pairs.

    rlaif judge --config configs/quickstart.yaml          # calls, audit, then the filter
    rlaif filter --config configs/quickstart.yaml filter.min_margin=0.2
    rlaif calibrate --config configs/api-judge-rubric.yaml gold=gold.jsonl

At this folder's top, the judge stage and what every call goes through:
    stage.py       the stage: candidates -> ledger -> judgments.parquet + judge-report.json -> pairs
    candidates.py  the round's candidates, and which of them may be sent (reject reasons, counted)
    templates.py   what the judge is asked: the user's criteria in versioned templates (templates/),
                   candidate text fenced as data, strict parsing of verdicts
    session.py     JudgeSession, the one public way to send judge calls (templates + ledger + backend)
    runner.py      sending: the ledger first, the budgets, the backend, one ledger row per reply
    ledger.py      the SQLite ledger: no paid call is made twice, across crashes and reruns
    identity.py    what identifies a judge, part of every ledger key
Rooms:
    backends/      who answers: the one-method contract and one module per backend (OpenAI chat,
                   OpenAI Batch, local model, reward model), with the API rate governor
    pairs/         verdicts -> pairs: the two pair sources (rank.py, revise.py), compare.py (both
                   orders, scores, margins) and the filter stage (filter.py, revise_pairs.py)
    trust/         whether to believe the judge: the bias audit (audit.py), calibration on human
                   gold pairs (calibrate.py, gold.py)
"""

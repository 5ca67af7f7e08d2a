"""judge: audited LLM judging of candidates into preference pairs (the filter lives here too).

    rlaif judge --config configs/quickstart.yaml
    rlaif filter --config configs/quickstart.yaml filter.min_margin=0.2
"""

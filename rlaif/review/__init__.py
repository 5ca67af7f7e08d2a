"""review: a local web page over a whole run folder, for people, and the human labels it collects.

    rlaif review runs/quickstart                     # http://127.0.0.1:8765/
    rlaif review runs/quickstart --export gold.jsonl # labels -> gold pairs for `rlaif calibrate`

It reads every stage's files (candidates, judgments, pairs, evaluation), so it lives beside the
stage packages, not in one of them:
    server.py  the HTTP server (standard library, 127.0.0.1 only) and its JSON endpoints
    page.html  the one static page (inline JS and CSS, no CDN)
    data.py    what the page shows, read from the run folder's files only
    labels.py  the label store (RUN_DIR/human-labels.sqlite), the judge's agreement with it, the gold export
"""

"""Credentials in a judge's base_url (issue 18, item 3) and a local server without a key (item 10),
against a real server process that requires them: basic auth from the URL's userinfo and an
Azure-style ?api-key= query. RUN_DIR/config.yaml keeps them masked; the stages of `rlaif run` get
the real URLs through their environment, and nothing the run writes holds a secret."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from conftest import ROOT, rlaif_cli
from judges import write_candidates
from rlaif.config import dump_config, load_config
from rlaif.credentials import SECRETS_ENV, secret_urls
from servers import FakeJudgeServer

KEY, ENV = "sk-run-secrets-3c1d5e7f9a0b", "RLAIF_RUN_SECRETS_KEY"
USER, PASSWORD, QKEY = "judgeuser", "pw-9f8e7d6c5b4a3210", "qk-1a2b3c4d5e6f7788"
SECRETS = (PASSWORD, QKEY, KEY)
URL_AUTH = {"FAKE_OPENAI_URL_AUTH": f"{USER}:{PASSWORD}", "FAKE_OPENAI_QUERY_KEY": QKEY}


def cred_url(srv) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{srv.port}/v1?api-key={QKEY}"


def no_secret_in(run_dir, *texts: str) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        assert not any(s.encode() in data for s in SECRETS), p
    for t in texts:
        assert not any(s in t for s in SECRETS)


def test_rlaif_run_with_credentials_in_the_judge_url(tmp_path, tiny_model):
    """Every stage of `rlaif run` that calls the judge (judge, evaluate) reaches a server that refuses
    requests without the URL's credentials; config.yaml, manifests, ledgers and logs hold none."""
    run_dir = tmp_path / "run"
    with FakeJudgeServer(policy="longer", env=URL_AUTH) as srv:
        res = rlaif_cli("run", "configs/quickstart.yaml", f"run_dir={run_dir}", f"model={tiny_model}", "rounds=1",
                        "prompts=tests/assets/prompts.jsonl", "generate.max_prompts=4", "generate.n=3",
                        "generate.max_tokens=12", "generate.temperature=1.0", "judge.backend=openai",
                        f"judge.base_url={cred_url(srv)}", "judge.model=fake-judge", f"judge.api_key_env={ENV}",
                        "judge.mode=pairwise", "judge.max_backoff_s=0.2", "judge.timeout_s=5",
                        "filter.drop_length_truncated=false", "filter.max_length_ratio=null",
                        "train.max_steps=1", "train.batch_size=2", "train.max_length=128",
                        "evaluate.prompts=tests/assets/heldout.jsonl", "evaluate.n_prompts=3",
                        "evaluate.mode=pairwise", env={ENV: KEY}, timeout=1200)
        stats = srv.stats()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert stats["unauthorized"] == 0 and stats["ok"] > 0, stats
    assert json.loads((run_dir / "round-0" / "judge-report.json").read_text())["calls"] > 0
    assert (run_dir / "round-0" / "eval" / "eval.json").exists()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["judge"]["base_url"]
    assert saved == f"http://***@127.0.0.1:{srv.port}/v1?api-key=%2A%2A%2A"
    no_secret_in(run_dir, res.stdout, res.stderr)


def test_a_stage_of_rlaif_run_gets_the_critics_url_from_its_environment(tmp_path):
    """The judge stage as `rlaif run` starts it: from the masked RUN_DIR/config.yaml, the real URLs
    (judge and revise.critic) in $RLAIF_RUN_SECRETS. Without them the stage refuses in one line
    before sending anything, instead of sending '***'."""
    run_dir = tmp_path / "run"
    write_candidates(run_dir, {f"p{p}": [f"Answer {i} to {p}: " + "word " * (3 + 2 * i) for i in range(2)]
                               for p in range(3)})
    with FakeJudgeServer(policy="longer", env=URL_AUTH) as srv:
        critic = {"backend": "openai", "base_url": cred_url(srv), "model": "fake-judge", "api_key_env": ENV,
                  "max_backoff_s": 0.2, "timeout_s": 5, "api_style": "chat"}
        cfg = load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                                 "judge.backend=openai", f"judge.base_url={cred_url(srv)}", "judge.model=fake-judge",
                                 f"judge.api_key_env={ENV}", "judge.api_style=chat", "judge.max_backoff_s=0.2",
                                 "judge.timeout_s=5", "pairs.source=revise", 'judge.principles=["Be brief."]',
                                 f"revise.critic={json.dumps(critic)}", "revise.max_tokens=64"])
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: KEY, "RLAIF_RUN_CHILD": "1"}
        env.pop(SECRETS_ENV, None)
        cmd = [sys.executable, "-m", "rlaif", "judge", "--config", str(run_dir / "config.yaml"), "round=0"]
        bare = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert bare.returncode == 2 and "judge.base_url holds credentials masked" in bare.stderr, bare.stderr
        assert srv.stats()["requests"] == 0
        env[SECRETS_ENV] = json.dumps(secret_urls(cfg))
        assert set(json.loads(env[SECRETS_ENV])) == {"judge", "revise.critic"}
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        stats = srv.stats()
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert stats["unauthorized"] == 0 and stats["ok"] >= 6, stats  # 3 critiques, 3 revisions, confirmations
    no_secret_in(run_dir, res.stdout, res.stderr, bare.stdout, bare.stderr)


def test_no_key_for_a_local_server_and_never_the_openai_key(tmp_path):
    """judge.api_key_env: null judges against a server without a key, and the real $OPENAI_API_KEY is
    never sent: a server that would accept exactly that key sees only refused requests."""
    real = "sk-real-openai-key-do-not-send-0042"
    write_candidates(tmp_path, {f"p{p}": [f"Answer {i} to {p}: " + "word " * (3 + 2 * i) for i in range(2)]
                                for p in range(2)})
    args = [f"run_dir={tmp_path}", "prompts=tests/assets/prompts.jsonl", "model=policy", "judge.backend=openai",
            "judge.model=fake-judge", "judge.api_key_env=null", "judge.max_backoff_s=0.2", "judge.timeout_s=5",
            "judge.max_retries=0"]
    with FakeJudgeServer(policy="longer") as open_srv:
        res = rlaif_cli("judge", *args, f"judge.base_url={open_srv.base_url}", env={"OPENAI_API_KEY": real})
        assert res.returncode == 0, res.stderr[-3000:]
        assert open_srv.stats()["ok"] > 0
    (tmp_path / "round-0" / "judge-ledger.sqlite").unlink()
    for name in ("judge.manifest.json", "judge-report.json", "pairs.card.json"):
        (tmp_path / "round-0" / name).unlink(missing_ok=True)
    with FakeJudgeServer(api_key=real, policy="longer") as guarded:
        res = rlaif_cli("judge", *args, f"judge.base_url={guarded.base_url}", env={"OPENAI_API_KEY": real})
        stats = guarded.stats()
    assert res.returncode != 0 and "HTTP 401" in res.stderr, res.stderr[-2000:]
    assert stats["unauthorized"] > 0 and stats["ok"] == 0, stats

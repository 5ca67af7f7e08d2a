"""Self-played conversations (issue 23, item 4) on the tiny random Llama: `turns` prompts are played
out by the sampling policy, so the candidates share the policy's own earlier turns and differ in the
final one; a kill -9 in the middle of a conversation, then a rerun, gives the uninterrupted run's rows."""
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl

from conftest import ROOT, rlaif_cli
from rlaif.config import load_config
import rlaif.generate as generate

TURNS = [["Name a colour.", "Now a fruit of that colour.", "Write one line about it."],
         ["Pick a number from 1 to 9.", "Double it."],
         ["Say hello.", "Say it in French.", "Now in German."]]


def _prompts(path, n=3):
    rows = [{"prompt_id": f"c{i}", "turns": TURNS[i % 3]} for i in range(n)] + [{"prompt_id": "plain", "prompt": "Hi?"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(prompts, *extra):
    return ["generate", "--config", "configs/quickstart.yaml", f"prompts={prompts}", "generate.max_tokens=12",
            "generate.n=3", *extra]


def _candidates(run_dir):
    files = sorted((run_dir / "round-0" / "candidates").glob("part-*.parquet"))
    return pl.read_parquet(files).sort("candidate_id")


def _answers(run_dir, k):
    files = sorted((run_dir / "round-0" / "turns" / f"turn-{k}" / "candidates").glob("part-*.parquet"))
    df = pl.read_parquet(files)
    assert df.height == df["prompt_id"].n_unique()  # one answer per conversation and turn (n=1)
    return dict(zip(df["prompt_id"], df["response"]))


def test_candidates_share_the_policy_s_own_earlier_turns(tmp_path, tiny_model):
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path}", f"model={tiny_model}",
                                                         f"prompts={_prompts(tmp_path / 'p.jsonl')}",
                                                         "generate.max_tokens=12", "generate.n=3"])
    generate.run(cfg)
    cands, a1, a2 = _candidates(tmp_path), _answers(tmp_path, 1), _answers(tmp_path, 2)
    assert set(a1) == {"c0", "c1", "c2"} and set(a2) == {"c0", "c2"}  # c1 has 2 turns: nothing at turn 2
    for pid, turns in (("c0", TURNS[0]), ("c1", TURNS[1]), ("c2", TURNS[2])):
        rows = cands.filter(pl.col("prompt_id") == pid)
        assert rows.height == 3 and rows["messages"].n_unique() == 1  # the history is shared, sampled once
        chat = rows["messages"][0].to_list()
        want = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": a1[pid]},
                {"role": "user", "content": turns[1]}]
        if len(turns) == 3:
            want += [{"role": "assistant", "content": a2[pid]}, {"role": "user", "content": turns[2]}]
        assert chat == want  # the policy's own answers, then the final user turn the candidates answer
    # turn 2 was asked after the policy's own turn 1: its prompt held that answer
    t2 = pl.read_parquet(sorted((tmp_path / "round-0" / "turns" / "turn-2" / "candidates").glob("part-*.parquet")))
    assert t2.filter(pl.col("prompt_id") == "c0")["messages"][0].to_list()[1]["content"] == a1["c0"]
    plain = cands.filter(pl.col("prompt_id") == "plain")["messages"][0].to_list()
    assert plain == [{"role": "user", "content": "Hi?"}]
    assert json.loads((tmp_path / "round-0" / "turns" / "turn-1" / "candidates.manifest.json").read_text())
    # one model for every played turn: turn 1 loaded it, turn 2 sampled on the same one
    loaded = [json.loads((tmp_path / "round-0" / "turns" / f"turn-{k}" / "candidates" / "worker-main.json")
                         .read_text())["model_loaded"] for k in (1, 2)]
    assert loaded == [True, False]


def test_kill_9_mid_conversation_then_rerun_equals_the_clean_run(tmp_path, tiny_model):
    prompts = _prompts(tmp_path / "p.jsonl", n=12)
    args = _args(prompts, f"model={tiny_model}", "generate.shard_size=1", "generate.temperature=1.0")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    turn2 = killed / "round-0" / "turns" / "turn-2" / "candidates"
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *args, f"run_dir={killed}"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # the kill point: turn 2's first shard written, turn 2 not finished
    while not list(turn2.glob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(list(turn2.glob("part-*.parquet")))
    assert 1 <= at_kill < 8 and not (killed / "round-0" / "candidates.manifest.json").exists()
    resumed = rlaif_cli(*args, f"run_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout  # the played turns already written are not sampled again
    assert rlaif_cli(*args, f"run_dir={clean}").returncode == 0
    a, b = _candidates(killed), _candidates(clean)
    assert a.height == 13 * 3 and a.equals(b)

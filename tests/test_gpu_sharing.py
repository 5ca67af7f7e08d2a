"""One card, several engines (issue 22 item 6): stages hold the GPU one at a time; inside evaluate the
answers' engine is closed before the judge loads; two judge engines held at once (the judge and
revise.critic) must be given shares that fit together, which `rlaif check` says before anything runs."""
import polars as pl

import rlaif.generate.backends as B
from conftest import ROOT
from rlaif.check import Report, check_gpu_sharing, gpu_plan
from rlaif.config import load_config
from rlaif.generate import sample_prompts


def _cfg(*extra):
    return load_config(ROOT / "configs/quickstart.yaml", ["pairs.source=revise", "judge.backend=vllm",
                                                           "judge.mode=score", "judge.checklist=[]", *extra])


def test_two_judge_engines_in_one_stage_must_share_the_card():
    r = Report()
    check_gpu_sharing(_cfg("revise.critic={backend: vllm}"), ["judge"], r)
    (p,) = r.problems
    assert p["key"] == "revise.critic.gpu_memory_utilization" and "0.85 + " in p["message"] and "1.70" in p["message"]
    assert "judge: judge (vLLM engine at 0.85 of the card) + revise.critic" in r.info["gpu_plan"][0]
    r = Report()
    check_gpu_sharing(_cfg("revise.critic={backend: vllm, gpu_memory_utilization: 0.45}",
                           "judge.gpu_memory_utilization=0.45"), ["judge"], r)
    assert not r.problems
    r = Report()  # a served judge's share is the one it is started with
    check_gpu_sharing(_cfg("judge.backend=openai", "judge.serve=true", "judge.api_key_env=null", "judge.model=m",
                           "judge.serve_args={gpu_memory_utilization: 0.5}", "revise.critic={backend: vllm}"),
                      ["judge"], r)
    assert r.problems and "0.5 + " in r.problems[0]["message"]


def test_plan_names_what_holds_the_gpu_in_order():
    lines = gpu_plan(load_config(ROOT / "configs/quickstart.yaml", ["generate.backend=vllm", "judge.backend=vllm"]),
                     ["generate", "judge", "train", "evaluate"])
    assert [ln.split(":")[0] for ln in lines] == ["generate", "judge", "train", "evaluate"]
    assert "closed, then the judge (vLLM engine" in lines[-1]


def test_evaluate_answers_release_their_model_before_the_judge_loads(tmp_path, tiny_model, monkeypatch):
    built = []
    real = B.load_backend

    def spy(*a, **k):
        built.append(real(*a, **k))
        return built[-1]

    monkeypatch.setattr(B, "load_backend", spy)
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path}", f"model={tiny_model}",
                                                         "generate.max_tokens=4"])
    prompts = pl.DataFrame({"prompt_id": ["a", "b"], "messages": [[{"role": "user", "content": "Hi"}],
                                                                   [{"role": "user", "content": "Bye"}]]})
    sample_prompts(cfg, prompts, tmp_path / "answers", tag="eval-sft", desc="evaluate: SFT answers")
    assert len(built) == 1 and built[0].model is None  # closed: the weights are gone before anything else loads

"""Cards for `rlaif export`: README.md files with YAML metadata, as the Hugging Face Hub reads them.

The metadata block is the Hub's card format (a `---` fenced YAML header: huggingface_hub's
DatasetCard / ModelCard parse it): the Hub's own keys (pretty_name, tags, task_categories,
size_categories; library_name, pipeline_tag) plus an `rlaif` mapping with what a reader needs to
trust the data: the judge's identity and rubric, the filter funnel, counts, lengths and, when
`rlaif calibrate` ran, the judge's agreement with human labels. Models are named as a reader can find
them, never by a path of this machine (rlaif/train/export.py `readable`): the Hub's `base_model` key is
set only from `export.base_model` (the Hub expects a repository id there; rlaif trains from local
folders), else the card names the base model's folder.
"""
from __future__ import annotations

import polars as pl
import yaml


def lengths(pairs: pl.DataFrame) -> dict:
    """Token counts as the generator counted them (num_tokens), and characters."""
    c, r = pairs["chosen_tokens"], pairs["rejected_tokens"]
    return {"chosen_tokens_mean": float(c.mean()), "rejected_tokens_mean": float(r.mean()),
            "chosen_tokens_median": float(c.median()), "rejected_tokens_median": float(r.median()),
            "chosen_chars_mean": float(pairs["chosen"].str.len_chars().mean()),
            "rejected_chars_mean": float(pairs["rejected"].str.len_chars().mean()),
            "chosen_longer_share": float((c > r).mean())}


LONGER = ("longer_wins_rate", "longer_scored_higher_rate")  # pairwise judges; judges that score alone


def _size(n: int) -> str:
    # The Hub's size_categories buckets.
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _judge(j: dict) -> dict:
    keys = ("judge_model", "judge_id", "identity", "backend", "mode", "strategy", "rubric", "template_versions",
            "explain", "verdicts", "self_judging", "position_consistency", "longer_wins_rate",
            "longer_scored_higher_rate", "invalid_rate", "calls", "cost_usd")
    return {k: j.get(k) for k in keys if k in j}


def _front(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100) + "---\n"


def _pct(x) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.0f}%"


def _num(x, digits: int = 3) -> str:
    return "-" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{x:.{digits}g}"


def dataset_card(info: dict) -> str:
    card, judge, cal, n = info["card"], _judge(info["judge"]), info["calibration"], info["pairs"]
    funnel = {"comparisons_in": card.get("comparisons_in"), "removed": card.get("removed"), "kept": card.get("kept")}
    meta = {"pretty_name": f"rlaif preference pairs: {info['run']} round {info['round']}",
            "tags": ["rlaif", "dpo", "preference", "synthetic", "trl"], "task_categories": ["text-generation"],
            "size_categories": [_size(n)],
            "rlaif": {"run": info["run"], "round": info["round"], "pairs": n, "judge": judge, "filter": funnel,
                      "filter_config": card.get("config"), "lengths": info["lengths"], "calibration": cal}}
    rubric = (judge.get("rubric") or {}).get("first_line", "-")
    lines = [_front(meta), f"# {meta['pretty_name']}", "",
             f"{n} preference pairs kept by rlaif's filter from round {info['round']} of the run `{info['run']}`, "
             f"judged by `{judge.get('judge_model', '-')}`"
             + (" (a local model folder, by name; set `export.judge_model` to its Hub id; "
                if info["judge"].get("judge_is_folder") else " (") + f"judge id {judge.get('judge_id', '-')}, "
             f"{judge.get('mode', '-')} mode) against the rubric: {rubric}", "",
             "## Use", "", "```python", "from datasets import load_from_disk", "from trl import DPOConfig, DPOTrainer",
             "", 'pairs = load_from_disk("dataset")  # this folder',
             "trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=pairs, processing_class=tokenizer)",
             "```", "", "## Columns", "",
             "- `prompt`, `chosen`, `rejected`: TRL's conversational preference format (explicit prompt): the "
             "prompt's chat messages, and one assistant message each for the chosen and the rejected response.",
             "- `prompt_id`, `chosen_id`, `rejected_id`: rlaif's ids; `margin` (0..1): how clearly the judge "
             "preferred `chosen`; `consistent`: both orders agreed; `chosen_tokens`, `rejected_tokens`: lengths "
             "in the policy's tokens; `round`.", "", "## Filter funnel", "",
             "| step | comparisons |", "|---|---|", f"| judged | {funnel['comparisons_in']} |"]
    lines += [f"| removed: {k} | {v} |" for k, v in (funnel["removed"] or {}).items() if v]
    lines += [f"| kept | {funnel['kept']} |", "", "## Judge audit", "",
              f"Position consistency {_num(judge.get('position_consistency'))}, longer-wins rate "
              f"{_pct(next((judge[k] for k in LONGER if judge.get(k) is not None), None))}, invalid rate "
              f"{_num(judge.get('invalid_rate'))}"
              f"{', the policy judged itself' if judge.get('self_judging') else ''}. Chosen is the longer response "
              f"in {_pct(info['lengths']['chosen_longer_share'])} of pairs (mean tokens "
              f"{info['lengths']['chosen_tokens_mean']:.0f} chosen vs {info['lengths']['rejected_tokens_mean']:.0f} "
              "rejected).", "", "## Calibration against human labels", ""]
    if cal:
        who = "this judge" if cal["same_judge"] else f"another judge ({cal.get('judge_id')}), not this one"
        lines.append(f"`rlaif calibrate` of {who}: agreement {_pct(cal.get('agreement'))} with humans on "
                     f"{cal.get('n')} gold pairs, Cohen's kappa {_num(cal.get('cohen_kappa'), 2)}.")
    else:
        lines.append("None: this judge was not calibrated (`rlaif calibrate`), so its agreement with people is unknown.")
    return "\n".join(lines) + "\n"


def model_card(info: dict, manifest: dict, kind: str) -> str:
    """kind: adapter (LoRA on the base model) or merged (base + adapter as one model)."""
    t = manifest.get("train") or {}
    final = manifest.get("final") or {}
    keep = ("beta", "loss_type", "label_smoothing", "loss_weights", "learning_rate", "max_steps", "num_epochs",
            "batch_size", "lora_r", "lora_alpha", "lora_target_modules", "reference")
    base = str(info.get("base_model") or "BASE")  # a Hub id (export.base_model) or the folder's name
    meta = {"library_name": "peft" if kind == "adapter" else "transformers", "pipeline_tag": "text-generation",
            **({"base_model": base} if info.get("base_is_hub") else {}),
            "tags": ["rlaif", "dpo", "trl"] + (["lora", "peft"] if kind == "adapter" else []),
            "rlaif": {"run": info["run"], "round": info["round"], "kind": kind,
                      "base_model": base, "adapter_id": manifest.get("adapter_id"),
                      "steps": manifest.get("steps"), "final": final, "pairs": manifest.get("pairs"),
                      "train": {k: t.get(k) for k in keep if k in t}, "judge_id": info["judge"].get("judge_id"),
                      "dataset": "../dataset"}}
    where = ("adapter_config.json's base_model_name_or_path" if kind == "adapter" else "config.json's _name_or_path")
    named = (f"The base model is `{base}` on the Hugging Face Hub." if info.get("base_is_hub") else
             f"The base model was a local folder named `{base}`; set `export.base_model` to its Hub id to name it.")
    if info.get("renamed"):
        named += f" In this export, {where} says `{base}` (training wrote the local path there)."
    load = ([f'base = AutoModelForCausalLM.from_pretrained("{base}")',
             'model = PeftModel.from_pretrained(base, "adapter")  # this folder'] if kind == "adapter"
            else ['model = AutoModelForCausalLM.from_pretrained("merged")  # this folder'])
    lines = [_front(meta), f"# rlaif policy: {info['run']} round {info['round']} ({kind})", "",
             f"A DPO-trained LoRA policy (TRL DPOTrainer + PEFT) from round {info['round']} of `{info['run']}`"
             + (", merged into its base model" if kind == "merged" else "") + f": {manifest.get('steps')} steps, "
             f"final loss {_num(final.get('loss'))}, reward accuracy {_num(final.get('rewards/accuracies'))}. Trained "
             "on the pairs in `../dataset` (their card names the judge, rubric and filters). " + named, "",
             "```python", "from transformers import AutoModelForCausalLM"
             + ("\nfrom peft import PeftModel" if kind == "adapter" else ""), *load, "```"]
    return "\n".join(lines) + "\n"

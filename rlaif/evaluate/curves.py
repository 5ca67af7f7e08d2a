"""Training curves for the run report: what a DPO user watches, per round, from
round-K/train/train-metrics.jsonl (one JSON line per logged step, written by rlaif/train/stage.py
with TRL's DPOTrainer keys), plus the two flags a round can raise.

Drift from the reference. TRL 1.16's DPOTrainer logs no KL estimate (trl/trainer/dpo_trainer.py
logs loss, rewards/{chosen,rejected,accuracies,margins}, logps/{chosen,rejected}, logits/*,
entropy, mean_token_accuracy). Its rewards/chosen and rewards/rejected are beta * (log pi(y|x) -
log pi_ref(y|x)) averaged over the step's batch, against the same reference the loss uses, so

    drift = (rewards/chosen + rewards/rejected) / (2 * beta)

is the mean log-ratio of the policy to the reference on the step's training responses, in nats per
response. It is 0 while the policy is the reference (round 0 starts there: LoRA's zero update).
When the responses were sampled from the reference, -drift estimates KL(ref || policy); for later
rounds they come from the previous policy, so it is a signed indicator, not a divergence. A drift
from logps/chosen alone would mix in how long each batch's responses are; the log-ratio does not.

Flags (both on the last half of the logged steps, where the round ended; step 1 of round 0 is the
reference itself, so a whole-round mean would understate where training got to):
- reward accuracy at chance: mean rewards/accuracies <= 0.5 + CHANCE_BAND. TRL counts a tie as
  wrong (strict >), so a policy that has not moved scores 0, not 0.5: "at or below chance" is the
  rule. These are accuracies on the pairs being fitted; not beating chance on them means the round
  learnt nothing (learning rate, steps, or pairs without a consistent preference). 0.05 is a
  tolerance for a few noisy batches, not a significance test: with 2-pair batches over 3 steps a
  round at 0.67 is not flagged, and one at 0.5 is.
- drift explodes: |mean drift| > MAX_DRIFT_NATS, training responses on average e^20 (about 5e8)
  times more or less likely than under the reference: the policy is no longer near the model the
  loss is anchored to (a diverging or over-optimising round), whatever the judge says of it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
        "logps/chosen", "logps/rejected")
CHANCE_BAND = 0.05
MAX_DRIFT_NATS = 20.0


def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(step logs in step order, unreadable lines). A line that does not parse as a JSON object (a
    torn last line after a kill) is skipped and counted; lines without a step and a loss (the
    trainer's end-of-run summary) are not steps. A step logged twice keeps its last line."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return [], 0
    steps, bad = {}, 0
    for ln in lines:
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
        elif _isnum(obj.get("step")) and _isnum(obj.get("loss")):
            steps[int(obj["step"])] = obj
    return [steps[s] for s in sorted(steps)], bad


def drift(log: dict, beta: float | None) -> float | None:
    c, r = log.get("rewards/chosen"), log.get("rewards/rejected")
    return (c + r) / (2 * beta) if _isnum(c) and _isnum(r) and _isnum(beta) and beta > 0 else None


def _tail_mean(values: list) -> float | None:
    vals = [v for v in values[len(values) // 2:] if _isnum(v)]
    return float(np.mean(vals)) if vals else None


def summarize(logs: list[dict], beta: float | None, bad: int = 0) -> dict:
    """One round's training in figures, with its flags (see the module docstring)."""
    acc = _tail_mean([x.get("rewards/accuracies") for x in logs])
    d = _tail_mean([drift(x, beta) for x in logs])
    flags = []
    if acc is not None and acc <= 0.5 + CHANCE_BAND:
        flags.append(f"reward accuracy {acc:.2f} over the last {len(logs) - len(logs) // 2} of {len(logs)} logged "
                     f"steps, at or below chance (<= {0.5 + CHANCE_BAND:.2f}): DPO did not learn to rank its own "
                     "training pairs (raise train.learning_rate or train.max_steps, or check the pairs)")
    if d is not None and abs(d) > MAX_DRIFT_NATS:
        flags.append(f"drift from the reference exploded: mean log-ratio {d:+.1f} nats per training response over "
                     f"the last half of steps (limit {MAX_DRIFT_NATS:.0f}); lower train.learning_rate or raise "
                     "train.beta")
    first, last = (logs[0].get("loss"), logs[-1].get("loss")) if logs else (None, None)
    return {"steps": len(logs), "unreadable_lines": bad, "loss_first": first, "loss_last": last,
            "accuracy_tail": acc, "margin_tail": _tail_mean([x.get("rewards/margins") for x in logs]),
            "drift_tail": d, "flags": flags}


def beta_of(r: dict, run_dir: Path) -> float | None:
    """DPO's beta for round r: its train manifest, else the run's config.yaml (read as plain YAML:
    the report must not need the user's check functions importable), else unknown."""
    def beta(d):
        t = d.get("train") if isinstance(d, dict) else None
        return float(t["beta"]) if isinstance(t, dict) and _isnum(t.get("beta")) else None

    if (b := beta(r.get("train"))) is not None:
        return b
    try:
        import yaml

        return beta(yaml.safe_load((run_dir / "config.yaml").read_text()))
    except (OSError, yaml.YAMLError):
        return None


def training(run_dir: Path, rounds: list[dict]) -> list[tuple[int, list[dict], dict]]:
    """(round, step logs, summary) for every round with a train-metrics.jsonl."""
    out = []
    for r in rounds:
        path = r["dir"] / "train" / "train-metrics.jsonl"
        if path.exists():
            beta = beta_of(r, run_dir)
            logs, bad = read_metrics(path)
            out.append((r["round"], [{**x, "drift": drift(x, beta)} for x in logs], summarize(logs, beta, bad)))
    return out


def table(trained: list[tuple[int, list[dict], dict]]) -> list[str]:
    """Markdown lines: one row per trained round."""
    if not trained:
        return []

    def f(x, fmt="{:.2f}"):
        return fmt.format(x) if _isnum(x) else "-"

    lines = ["| round | steps logged | loss first → last | reward accuracy | reward margin | drift (nats) "
             "| unreadable lines |", "|---|---|---|---|---|---|---|"]
    for k, _, s in trained:
        lines.append(f"| {k} | {s['steps']} | {f(s['loss_first'], '{:.3f}')} → {f(s['loss_last'], '{:.3f}')} | "
                     f"{f(s['accuracy_tail'])} | {f(s['margin_tail'], '{:.3f}')} | {f(s['drift_tail'], '{:+.2f}')} | "
                     f"{s['unreadable_lines']} |")
    return lines + ["", "Reward accuracy, margin and drift: means over the last half of the round's logged steps "
                        "(TRL's rewards/accuracies and rewards/margins; drift = mean log(policy/reference) on the "
                        "training responses, (rewards/chosen + rewards/rejected) / (2 beta))."]


PANELS = (("loss", ("loss",), np.log(2), "DPO loss (ln 2: no preference)"),
          ("reward accuracy", ("rewards/accuracies",), 0.5, "chance"),
          ("reward margin (beta · log-ratio)", ("rewards/margins",), 0.0, None),
          ("rewards chosen / rejected", ("rewards/chosen", "rewards/rejected"), 0.0, None),
          ("log-probs chosen / rejected", ("logps/chosen", "logps/rejected"), None, None),
          ("drift: mean log(policy / reference), nats", ("drift",), 0.0, None))


def plot(trained: list[tuple[int, list[dict], dict]], path: Path) -> bool:
    """training.png: one panel per quantity, one colour per round (x: the round's training step);
    chosen solid, rejected dashed. False when no round logged a step."""
    trained = [t for t in trained if t[1]]
    if not trained:
        return False
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from rlaif.io import atomic_write

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, keys, ref, ref_label) in zip(axes.flat, PANELS):
        for i, (k, logs, _) in enumerate(trained):
            for key, style in zip(keys, ("-", "--")):
                pts = [(x["step"], x[key]) for x in logs if _isnum(x.get(key))]
                if pts:
                    label = f"round {k}" + (f" {key.split('/')[-1]}" if len(keys) > 1 else "")
                    ax.plot(*zip(*pts), style, marker=".", color=f"C{i}", label=label)
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle=":", linewidth=1, label=ref_label)
        ax.set(title=title, xlabel="step in round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return True

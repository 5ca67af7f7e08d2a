"""train.loss_type against the installed TRL, without importing it (rlaif/config.py checks every
config at load, and importing trl pulls in torch and transformers).

TRL 1.16's DPOTrainer losses and what they read (trl/trainer/dpo_config.py, dpo_trainer.py):
robust and exo_pair read label_smoothing (robust: the share of flipped labels, in [0, 0.5), 0 being
plain DPO; exo_pair: EXO's epsilon, TRL refuses 0 when the trainer is built), and so do aot and
aot_unpaired; loss_weights weighs combined losses (MPO). SimPO is not among them: TRL has it as
CPOTrainer's loss_type="simpo".
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


@functools.lru_cache(maxsize=1)
def trl_loss_types() -> tuple[str, ...]:
    """The losses the installed TRL's DPOConfig documents (its loss_type help), read from its source
    without importing it: importing trl pulls in torch and transformers (~5 s here), too slow for every
    config load. Empty when TRL is not installed (a judge-only machine) or its file changed shape: then
    the train stage checks the names against the imported DPOConfig before anything is loaded."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return ()
    path = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "dpo_config.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ()
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type" and \
                isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "metadata":
                    try:
                        return losses_in_help(ast.literal_eval(kw.value)["help"])
                    except (ValueError, KeyError, TypeError):
                        return ()
    return ()


def losses_in_help(text: str) -> tuple[str, ...]:
    """The names in DPOConfig's loss_type help: "Possible values are: `'sigmoid'`, `'hinge'`, ... If multiple"."""
    return tuple(re.findall(r"`'(\w+)'`", text.split("If multiple")[0]))


def loss_problem(names: list[str], known: tuple[str, ...]) -> str | None:
    """What is wrong with these loss names for DPOTrainer, or None. `known` empty: only simpo is refused."""
    import difflib

    for n in names:
        if n == "simpo":  # TRL's SimPO is CPOTrainer's loss_type="simpo" (reference-free, another trainer)
            return ("simpo: SimPO is not a DPO loss in TRL (it is reference-free: TRL has it as CPOTrainer's "
                    "loss_type='simpo', in trl.experimental.cpo); rlaif trains with DPOTrainer, whose losses are: "
                    f"{', '.join(known) or 'see TRL DPOConfig.loss_type'}")
        if known and n not in known:
            near = difflib.get_close_matches(n, known, n=1)
            return (f"unknown loss {n!r}{f' (did you mean {near[0]}?)' if near else ''}; the installed TRL's "
                    f"DPOTrainer knows: {', '.join(known)}")
    return None

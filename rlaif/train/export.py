"""`rlaif export`: a round's kept pairs as a Hugging Face dataset, and its adapter, each with a card.

    rlaif export runs/quickstart --out exports/quickstart [round=K]

DIR/dataset is `datasets.Dataset.save_to_disk` of round-K/pairs.parquet (default: the last round
with pairs): TRL's conversational preference columns with an explicit prompt (prompt: the chat
list; chosen, rejected: one assistant message each; trl/data_utils.py `is_conversational`,
`apply_chat_template`), so `DPOTrainer(train_dataset=load_from_disk(DIR / "dataset"))` trains as
is, beside rlaif's own columns (ids, margin, consistency, token counts, round). rlaif's
`messages` column is not repeated: it is `prompt`, and TRL reads a `messages` key as another
format. DIR/adapter is round K's LoRA adapter, only when train.manifest.json says training
finished; DIR/merged the merged model when training built one. Each folder carries a README.md
card with YAML metadata (rlaif/train/cards.py). The export is built beside DIR, export.json written
last, and swapped into place in one step, so a kill at any point leaves DIR the old export or the whole
new one (issue 18, item 8; `_replace` says where a file system cannot swap).

Nothing exported names a path of this machine (issue 20): the cards name the base model and the judge by
`export.base_model` / `export.judge_model` (Hub ids: the run's config.yaml, or `export.KEY=VALUE` on the
command line), else by the folder's name; PEFT's adapter_config.json, which holds the local path of the
base model in `base_model_name_or_path`, gets the same name in the exported copy (the run's own file is
left alone), and the model card says so.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import polars as pl
import yaml

from rlaif.errors import UserError
from rlaif.io import PAIRS_SCHEMA, UMASK, json_object, read_parquet_checked, write_json, write_text
from rlaif.procs import alive
from rlaif.train import cards

RLAIF_COLUMNS = ("prompt_id", "chosen_id", "rejected_id", "margin", "consistent", "chosen_tokens", "rejected_tokens",
                 "round")
SKIP = {"training_args.bin", "README.md"}  # a pickle (never shared), and PEFT's stub card (ours replaces it)


def readable(name: str | None) -> str | None:
    """A model as a reader elsewhere can find it: a Hub id or API model name as is (an API name may hold
    slashes, e.g. accounts/x/models/y), a local folder (absolute, ./ or ~/, or existing here) by its name."""
    if not name:
        return name
    local = name.startswith((".", "~")) or Path(name).expanduser().is_absolute() or Path(name).exists()
    return Path(name).expanduser().name if local else name


def names(run_dir: Path, overrides: list[str] = ()) -> dict:
    """export.base_model / export.judge_model: the run's config.yaml, then `export.KEY=VALUE` items (these win)."""
    from pydantic import ValidationError

    from rlaif.config import ExportConfig

    try:
        data = dict((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("export") or {})
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        data = {}  # no config.yaml (or not a mapping): the folder names are used
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("export.") or key[7:] not in ExportConfig.model_fields:
            raise UserError(f"rlaif export: {item!r}: expected round=K, export.base_model=HUB_ID or "
                            "export.judge_model=HUB_ID")
        data[key[7:]] = value or None
    try:
        return ExportConfig.model_validate(data).model_dump()
    except ValidationError as e:
        raise UserError(f"{run_dir / 'config.yaml'}: export: {e.errors()[0]['msg']}") from None


def _judge(judge: dict, hub_id: str | None) -> dict:
    """judge-report.json as the card shows it: the judge, its identity and its rubric file by name, never path."""
    out = {**judge, "judge_model": hub_id or readable(judge.get("judge_model"))}
    if isinstance(judge.get("identity"), dict):
        out["identity"] = {**judge["identity"], "model": readable(judge["identity"].get("model"))}
    src = (judge.get("rubric") or {}).get("source")
    if src and src not in ("inline", "default", "principles"):
        out["rubric"] = {**judge["rubric"], "source": Path(src).name}  # a rubric file: its name
    out["judge_is_folder"] = not hub_id and judge.get("backend") in ("local", "reward_model")
    return out


def _name_base(folder: Path, base: str | None) -> bool:
    """The exported adapter_config.json (or merged config.json) names the base model `base`, not the local
    path PEFT wrote; a new file (write_json renames over it), so the run's hard-linked original is untouched."""
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        cfg = json_object(folder / name)
        if base and isinstance(cfg.get(key), str) and cfg[key] != base and readable(cfg[key]) != cfg[key]:
            write_json(folder / name, {**cfg, key: base})
            return True
    return False


def pick_round(run_dir: Path, k: int | None) -> Path:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if k is not None:
        rdir = run_dir / f"round-{k}"
        if not (rdir / "pairs.parquet").exists():
            raise UserError(f"{rdir}: no pairs.parquet; run `rlaif judge` for round {k} first")
        return rdir
    found = sorted((int(m.group(1)), p) for p in run_dir.glob("round-*/pairs.parquet")
                   if (m := re.fullmatch(r"round-(\d+)", p.parent.name)))
    if not found:
        raise UserError(f"{run_dir}: no round has pairs.parquet yet; run `rlaif judge` first")
    return found[-1][1].parent


def trl_rows(pairs: pl.DataFrame) -> list[dict]:
    """Pairs -> TRL conversational preference rows (the shape rlaif/train/data.py trains on), plus rlaif's columns."""
    return [{"prompt": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}],
             **{c: r[c] for c in RLAIF_COLUMNS}} for r in pairs.iter_rows(named=True)]


def _dataset(pairs: pl.DataFrame, out: Path) -> None:
    import datasets

    msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({
        "prompt": datasets.List(msg), "chosen": datasets.List(msg), "rejected": datasets.List(msg),
        "prompt_id": datasets.Value("string"), "chosen_id": datasets.Value("string"),
        "rejected_id": datasets.Value("string"), "margin": datasets.Value("float64"),
        "consistent": datasets.Value("bool"), "chosen_tokens": datasets.Value("int32"),
        "rejected_tokens": datasets.Value("int32"), "round": datasets.Value("int32")})
    datasets.Dataset.from_list(trl_rows(pairs), features=features).save_to_disk(str(out))


def _link_or_copy(src: str, dst: str) -> None:
    """Weights are hard-linked when the export is on the same file system (a merged 8B model is 16 GB);
    they are never edited in place, so the link is as good as a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_model(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in SKIP or n.startswith(".")],
                    copy_function=_link_or_copy)


def _calibration(run_dir: Path, judge_id: str | None) -> dict | None:
    """This judge's latest calibration (rlaif calibrate), else the latest of any judge, marked as such."""
    folder = run_dir / "calibration"
    mine = sorted(folder.glob(f"judge-{judge_id}-*.json"), key=lambda p: p.stat().st_mtime) if judge_id else []
    cal = json_object(mine[-1]) if mine else json_object(folder / "calibration.json")
    if not cal:
        return None
    keys = ("n", "agreement", "cohen_kappa", "position_consistency", "judge_longer_wins_rate",
            "human_longer_wins_rate", "invalid_rate", "judge_id", "template_version", "created_at")
    return {**{k: cal.get(k) for k in keys}, "same_judge": cal.get("judge_id") == judge_id}


def _adapter(rdir: Path, tmp: Path, info: dict) -> dict:
    """Copy the round's adapter (and merged model) with model cards; why not, when not."""
    train = rdir / "train"
    manifest = json_object(train / "train.manifest.json")
    if not manifest:
        return {"adapter": None, "why": f"{train / 'train.manifest.json'} missing: round {info['round']} has no "
                                        "finished training, so no adapter is exported"}
    if not (train / "adapter" / "adapter_config.json").exists():
        raise UserError(f"{train / 'adapter'}: no adapter_config.json although train.manifest.json exists; "
                        "the adapter folder was changed after training")
    info = {**info, "base_model": info["base_model"] or readable(manifest.get("base_model")),
            "base_is_hub": bool(info["base_model"])}
    _copy_model(train / "adapter", tmp / "adapter")
    renamed = _name_base(tmp / "adapter", info["base_model"])
    write_text(tmp / "adapter" / "README.md", cards.model_card({**info, "renamed": renamed}, manifest, "adapter"))
    out = {"adapter": "adapter", "merged": None}
    if (train / "merged" / "config.json").exists():
        _copy_model(train / "merged", tmp / "merged")
        renamed = _name_base(tmp / "merged", info["base_model"])
        write_text(tmp / "merged" / "README.md", cards.model_card({**info, "renamed": renamed}, manifest, "merged"))
        out["merged"] = "merged"
    return out


RENAME_EXCHANGE = 2  # <linux/fs.h>
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step: renameat2(2) with RENAME_EXCHANGE (Linux 3.15+, glibc 2.28+; ext4, xfs,
    btrfs, tmpfs, overlayfs). False where the kernel, C library or file system cannot (NFS, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished export (tmp) at out; an earlier export there is replaced, anything else refused.

    A kill at any point leaves out as the old export or the whole new one: the two folders are swapped in
    one step, then the old one (now at tmp) is removed. Where the file system cannot swap, the old export
    is renamed aside and the new one into place: a kill between the two leaves no out, but the old export
    whole in `.NAME.old-PID-*/x`, and the next `rlaif export` to out puts it back first (_recover)."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").exists()):
            raise UserError(f"{out}: exists and is not an rlaif export (no export.json); choose another --out")
        if _exchange(tmp, out):
            return  # the caller removes tmp, which now holds the old export
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _recover(out: Path) -> None:
    """After a killed export: put an old export set aside back at out, if out is missing, then remove what
    killed exports left beside it. Only folders of processes that are gone: a live export's are its own."""
    left = [p for p in out.parent.glob(f".{out.name}.*-*-*")
            if (m := re.fullmatch(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-.+", p.name)) and p.is_dir()
            and (int(m.group(2)) == os.getpid() or not alive(int(m.group(2))))]
    for p in left:
        if p.name.startswith(f".{out.name}.old-") and not out.exists() and (p / "x" / "export.json").exists():
            os.replace(p / "x", out)
            print(f"export: {out}: put back the earlier export that a killed export had set aside")
    for p in left:
        shutil.rmtree(p, ignore_errors=True)


def export(run_dir: Path, out: Path, k: int | None = None, overrides: list[str] = ()) -> Path:
    out = Path(out)
    if out.parent.is_dir():
        _recover(out)  # first, so even a refused export puts back what a killed one set aside
    rdir = pick_round(Path(run_dir), k)
    pairs = read_parquet_checked(rdir / "pairs.parquet", PAIRS_SCHEMA, "pairs")
    if pairs.is_empty():
        raise UserError(f"{rdir / 'pairs.parquet'}: no kept pairs to export (pairs.card.json says what each "
                        "filter removed)")
    judge, hub = json_object(rdir / "judge-report.json"), names(Path(run_dir), overrides)
    info = {"run": Path(run_dir).resolve().name, "round": int(rdir.name.split("-")[1]),
            "card": json_object(rdir / "pairs.card.json"), "judge": _judge(judge, hub["judge_model"]),
            "lengths": cards.lengths(pairs), "calibration": _calibration(Path(run_dir), judge.get("judge_id")),
            "pairs": pairs.height, "base_model": hub["base_model"]}
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; an export is meant to be shared
    try:
        _dataset(pairs, tmp / "dataset")
        write_text(tmp / "dataset" / "README.md", cards.dataset_card(info))
        models = _adapter(rdir, tmp, info)
        write_json(tmp / "export.json", {"stage": "export", "run": info["run"], "round": info["round"],
                                         "pairs": pairs.height, "dataset": "dataset", **models})
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"export: round {info['round']}: {pairs.height} pairs -> {out / 'dataset'}"
          + (f"; adapter -> {out / 'adapter'}" if models.get("adapter") else f"; {models['why']}"))
    return out

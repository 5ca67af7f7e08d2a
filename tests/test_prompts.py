"""Prompt loading: four formats, stable ids, and bad input that names the file, row and field."""
import json

import polars as pl
import pytest

from conftest import ASSETS, rlaif_cli
from rlaif.errors import UserError
from rlaif.io import read_prompts, stable_id

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_asset_mixes_prompt_and_messages():
    df = read_prompts(ASSETS / "prompts.jsonl")
    assert df.height == 12 and df["prompt_id"].n_unique() == 12
    first = df.row(0, named=True)
    assert first["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert df.row(2, named=True)["messages"][0]["role"] == "system"


def test_parquet_csv_and_hf_folder_agree(tmp_path):
    import datasets

    ref = read_prompts(ASSETS / "prompts.jsonl")
    ref.write_parquet(tmp_path / "p.parquet")
    ref.with_columns(pl.col("messages").map_elements(lambda m: json.dumps(m.to_list()), return_dtype=pl.String)) \
        .write_csv(tmp_path / "p.csv")
    datasets.Dataset.from_list(ref.to_dicts()).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ref.to_dicts())}).save_to_disk(str(tmp_path / "dd"))
    for src in ["p.parquet", "p.csv", "ds", "dd"]:
        assert read_prompts(tmp_path / src).to_dicts() == ref.to_dicts(), src


def test_missing_prompt_id_gets_a_stable_hash(tmp_path):
    p = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}, {"messages": CHAT}])
    a, b = read_prompts(p), read_prompts(p)
    assert a["prompt_id"].to_list() == b["prompt_id"].to_list()
    assert a["prompt_id"][0] == stable_id([{"role": "user", "content": "Hi?"}])


@pytest.mark.parametrize("rows,needle", [
    ([{"text": "hi"}], "line 1: no messages or prompt field"),
    ([{"prompt": "a"}, {"messages": [{"role": "robot", "content": "x"}]}], "line 2: field messages[0].role: 'robot'"),
    ([{"messages": [{"role": "user", "content": 5}]}], "line 1: field messages[0].content: expected a string"),
    ([{"messages": "not a list"}], "line 1: field messages: not a JSON chat list"),
    ([{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "a", "prompt": "y"}], "line 2: field prompt_id: duplicate 'a' (first at line 1)"),
    ([{"prompt": "same"}, {"prompt": "same"}], "the same prompt appears twice"),
    ([{"prompt": "   "}], "line 1: field prompt: expected a non-empty string"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], "last message is the assistant's"),
])
def test_bad_rows_name_line_and_field(tmp_path, rows, needle):
    p = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as e:
        read_prompts(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp_path / "p.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    cases = {"nope.jsonl": "prompts file not found", "empty.jsonl": "prompts file is empty",
             "broken.jsonl": "line 2: invalid JSON", "p.txt": "unknown prompts format",
             "folder": "not a saved Hugging Face dataset"}
    for name, needle in cases.items():
        with pytest.raises(UserError, match=needle):
            read_prompts(tmp_path / name)


def test_csv_row_numbers(tmp_path):
    (tmp_path / "p.csv").write_text('prompt_id,prompt\na,hello\nb,\n')
    with pytest.raises(UserError, match=r"row 2: field prompt: empty"):
        read_prompts(tmp_path / "p.csv")


@pytest.mark.parametrize("override,needle", [
    ("prompts=tests/assets/nope.jsonl", "tests/assets/nope.jsonl: prompts file not found"),
    ("model=/no/such/model", "model '/no/such/model': no such folder"),
])
def test_cli_bad_input_is_one_line(tmp_path, override, needle):
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", override)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr


# ----------------------------------------------------------------------------- issue 11, item 9

def test_bytes_that_are_not_utf8_are_one_line_naming_file_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", f"prompts={p}")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"{p}: line 2: byte 0xe9 at column 16 is not UTF-8" in lines[0]
    c = tmp_path / "latin1.csv"
    c.write_bytes(b"prompt_id,prompt\na,fine\nb,caf\xe9\n")
    with pytest.raises(UserError, match=r"latin1.csv: line 3: byte 0xe9 at column 6 is not UTF-8"):
        read_prompts(c)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    rows = [{"prompt_id": "a", "prompt": "Hi?"}, {"prompt_id": "b", "messages": CHAT}]
    plain = read_prompts(_write_jsonl(tmp_path / "plain.jsonl", rows))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.jsonl").read_bytes())
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt_id,prompt\na,Hi?\n")
    assert read_prompts(tmp_path / "bom.jsonl").to_dicts() == plain.to_dicts()
    assert read_prompts(tmp_path / "bom.csv").to_dicts() == plain.head(1).to_dicts()


def test_openai_content_parts_are_joined_text(tmp_path):
    parts = [{"type": "text", "text": "Translate this:"}, {"type": "text", "text": "bonjour"}]
    rows = [{"prompt_id": "a", "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                            {"role": "user", "content": parts}]}]
    df = read_prompts(_write_jsonl(tmp_path / "parts.jsonl", rows))
    assert df["messages"][0].to_list() == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Translate this:\nbonjour"}]
    # parquet holds the parts as a list of structs
    pl.DataFrame(rows).write_parquet(tmp_path / "parts.parquet")
    assert read_prompts(tmp_path / "parts.parquet").to_dicts() == df.to_dicts()


@pytest.mark.parametrize("content,needle", [
    ([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x.png"}}],
     "line 1: field messages[0].content[1]: type 'image_url'; only text parts are supported"),
    (["just a string"], "line 1: field messages[0].content[0]: a str, not a {type, text} object"),
    ([{"type": "text", "text": 3}], "line 1: field messages[0].content[0].text: expected a string"),
    ([], "line 1: field messages[0].content: an empty list of parts"),
])
def test_bad_content_parts_name_row_and_field(tmp_path, content, needle):
    p = _write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": content}]}])
    with pytest.raises(UserError) as e:
        read_prompts(p)
    assert str(p) in str(e.value) and needle in str(e.value)

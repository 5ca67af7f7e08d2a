"""Prompt loading: four formats, stable ids, and bad input that names the file, row and field."""
import json

import polars as pl
import pytest

from conftest import ASSETS, ROOT, rlaif_cli
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.prompts import prompt_data, read_prompts, read_prompts_counted, stable_id

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


# ----------------------------------------------------------------------------- issue 23, item 1

ROWS = [{"prompt_id": f"p{i}", "prompt": f"Question {i}?"} for i in range(6)]


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def _hub(tmp_path, rows=ROWS):
    """The Hub's parquet layout: two train shards and a validation split beside them."""
    root = tmp_path / "hub"
    _write_parquet(root / "data" / "train-00000-of-00002.parquet", rows[:4])
    _write_parquet(root / "data" / "train-00001-of-00002.parquet", rows[4:])
    _write_parquet(root / "data" / "validation-00000-of-00001.parquet", [{"prompt_id": "v0", "prompt": "Held out?"}])
    (root / "README.md").write_text("---\nconfigs: []\n---\n")
    return root


def test_hub_layout_reads_the_split_s_shards_in_order(tmp_path):
    root = _hub(tmp_path)
    df = read_prompts(root)  # split "train", as prompts_split defaults to
    assert df["prompt_id"].to_list() == [f"p{i}" for i in range(6)]
    assert df["messages"][4].to_list() == [{"role": "user", "content": "Question 4?"}]
    assert read_prompts(root, "validation")["prompt_id"].to_list() == ["v0"]
    with pytest.raises(UserError, match=r"hub/data: no 'test' shards \(has train, validation\); set prompts_split"):
        read_prompts(root, "test")


def test_plain_folder_of_jsonl_shards_reads_as_one_file(tmp_path):
    one = read_prompts(_write_jsonl(tmp_path / "all.jsonl", ROWS))
    (tmp_path / "shards").mkdir()
    _write_jsonl(tmp_path / "shards" / "part-0.jsonl", ROWS[:3])
    _write_jsonl(tmp_path / "shards" / "part-1.jsonl", ROWS[3:])
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    assert read_prompts(tmp_path / "shards").to_dicts() == one.to_dicts()


@pytest.mark.parametrize("names,split,read", [
    (["data/part-0.jsonl", "data/part-1.jsonl"], "train", [0, 1]),  # data/ without split names: all of it
    (["train-00000-of-00001.jsonl", "test-00000-of-00001.jsonl"], "test", [1]),  # the Hub's names at the top
    (["test.jsonl", "train-a.jsonl", "train-b.jsonl"], "train", [1, 2]),  # a split word leads the name
    (["x-1.jsonl", "x-2.jsonl"], "test", [0, 1]),  # no split word: a plain folder, whatever the split
])
def test_which_shards_a_folder_gives(tmp_path, names, split, read):
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _write_jsonl(tmp_path / name, [ROWS[i]])
    assert read_prompts(tmp_path, split)["prompt_id"].to_list() == [ROWS[i]["prompt_id"] for i in read]


def test_a_bad_row_in_shard_two_names_the_shard_its_row_and_the_field(tmp_path):
    rows = ROWS[:4] + [{"prompt_id": "p4", "prompt": "fine"}, {"prompt_id": "p5", "messages": [{"role": "robot", "content": "x"}]}]
    root = _hub(tmp_path, rows)
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", f"prompts={root}")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"{root}: data/train-00001-of-00002.parquet: row 2: field messages[0].role: 'robot'" in lines[0]


def test_columns_map_the_file_s_names_and_null_ignores_one(tmp_path):
    rows = [{"id": 7, "instruction": "Name a colour.", "sys": "Be brief.", "messages": "not ours"},
            {"id": 8, "instruction": "Name a fruit.", "sys": "", "messages": "not ours"}]
    p = _write_parquet(tmp_path / "p.parquet", rows)
    cols = {"prompt_id": "id", "prompt": "instruction", "system": "sys", "messages": None}
    df = read_prompts(p, columns=cols)
    assert df["prompt_id"].to_list() == ["7", "8"]
    assert df["messages"].to_list() == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        [{"role": "user", "content": "Name a fruit."}]]  # "" is no system prompt, as Hub sets write it
    with pytest.raises(UserError, match=r"row 1: field messages: not a JSON chat list"):
        read_prompts(p, columns={"prompt_id": "id", "prompt": "instruction"})  # unmapped, their messages are read
    with pytest.raises(UserError, match=r"row 1: no question \(prompt\) field \(columns: id, "
                                        r"instruction, sys, messages\); map one with prompts_columns"):
        read_prompts(p, columns={"prompt": "question", "messages": None})
    bad = _write_parquet(tmp_path / "bad.parquet", [{"instruction": "   "}])
    with pytest.raises(UserError, match=r"bad.parquet: row 1: field instruction \(prompt\): expected a non-empty"):
        read_prompts(bad, columns={"prompt": "instruction"})


def test_an_unknown_mapped_field_is_one_config_error():
    with pytest.raises(UserError) as e:
        load_config(ROOT / "configs/quickstart.yaml", ["evaluate.prompts_columns.question=q"])
    assert str(e.value).count("\n") == 0
    assert "evaluate.prompts_columns: unknown field 'question'; map one of prompt_id, prompt, messages, system, " \
           "turns" in str(e.value)
    with pytest.raises(UserError, match="prompts_columns: unknown field 'id'"):
        load_config(ROOT / "configs/quickstart.yaml", ["prompts_columns.id=prompt_id"])


def test_dedup_error_names_both_rows_first_keeps_the_first_and_counts(tmp_path):
    rows = [{"prompt": "Hi?"}, {"prompt_id": "x", "prompt": "A"}, {"prompt": "Hi?"}, {"prompt_id": "x", "prompt": "B"}]
    p = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError) as e:
        read_prompts(p)
    assert f"{p}: line 3: field prompt_id: duplicate {stable_id([{'role': 'user', 'content': 'Hi?'}])!r} " \
           "(first at line 1); the same prompt appears twice; prompts_dedup=first keeps the first" == str(e.value)
    df, counts = read_prompts_counted(p, dedup="first")
    assert counts == {"rows": 4, "duplicates_dropped": 2, "ids_derived": 1}
    assert [m[0]["content"] for m in df["messages"].to_list()] == ["Hi?", "A"]  # the first "x" is kept


def test_derived_ids_are_the_same_across_loads_and_shard_cuts(tmp_path):
    rows = [{"prompt": f"Question {i}?"} for i in range(5)] + [{"messages": CHAT}]
    one = read_prompts(_write_parquet(tmp_path / "one" / "all.parquet", rows))
    _write_parquet(tmp_path / "cut" / "a.parquet", rows[:2])
    _write_jsonl(tmp_path / "cut" / "b.jsonl", rows[2:])
    again = read_prompts(tmp_path / "one")
    assert one.to_dicts() == again.to_dicts() == read_prompts(tmp_path / "cut").to_dicts()
    assert one["prompt_id"][5] == stable_id(CHAT)  # a sha256 of the conversation, nothing else


def test_system_column_beats_system_prompt_and_a_system_turn_beats_both(tmp_path):
    own = [{"role": "system", "content": "Own."}, {"role": "user", "content": "Q3"}]
    rows = [{"prompt_id": "col", "prompt": "Q1", "system": "Column."},
            {"prompt_id": "none", "prompt": "Q2", "system": None},
            {"prompt_id": "turn", "messages": own, "system": "Column."}]
    df, _ = read_prompts_counted(_write_parquet(tmp_path / "p.parquet", rows), system_prompt="Config.")
    first = {r["prompt_id"]: r["messages"][0]["content"] for r in df.to_dicts()}
    assert first == {"col": "Column.", "none": "Config.", "turn": "Own."}
    assert df["messages"][2].to_list() == own
    # the id names the prompt, not the run's system prompt
    assert read_prompts(tmp_path / "p.parquet")["prompt_id"].to_list() == df["prompt_id"].to_list()
    assert stable_id([{"role": "user", "content": "Q2"}]) == \
        read_prompts(_write_jsonl(tmp_path / "q.jsonl", [{"prompt": "Q2"}]), system_prompt="Config.")["prompt_id"][0]


def test_turns_pass_through_with_their_first_turn_as_the_prompt(tmp_path):
    rows = [{"prompt_id": "a", "prompt": "Plain"}, {"prompt_id": "b", "turns": ["One?", "Two?"]}]
    df = read_prompts(_write_jsonl(tmp_path / "t.jsonl", rows))
    assert df.schema["turns"] == pl.List(pl.String)
    assert df["turns"].to_list() == [None, ["One?", "Two?"]]
    assert df["messages"][1].to_list() == [{"role": "user", "content": "One?"}]
    assert "turns" not in read_prompts(_write_jsonl(tmp_path / "p.jsonl", rows[:1])).columns
    same_start = read_prompts(_write_jsonl(tmp_path / "u.jsonl", [{"turns": ["One?", "Two?"]}, {"turns": ["One?", "Else?"]}]))
    assert same_start["prompt_id"].n_unique() == 2  # the id covers the turns to play, not only the first
    with pytest.raises(UserError, match=r"line 1: field dialog \(turns\): expected a non-empty list"):
        read_prompts(_write_jsonl(tmp_path / "v.jsonl", [{"dialog": []}]), columns={"turns": "dialog"})


def test_fingerprint_follows_columns_dedup_and_system_prompt(tmp_path):
    from rlaif.fingerprint import made_from

    base = [f"run_dir={tmp_path}", "prompts=tests/assets/prompts.jsonl"]
    ids = {extra: made_from(load_config(ROOT / "configs/quickstart.yaml", base + [extra] * bool(extra)), 0)["id"]
           for extra in ("", "prompts_columns.prompt=instruction", "prompts_dedup=first",
                         "generate.system_prompt=Be brief.")}
    assert len(set(ids.values())) == 4, ids


def test_generate_manifest_counts_the_prompts_read(tmp_path, tiny_model):
    from rlaif import generate

    rows = [{"q": "Hi?", "sys": "Be brief."}, {"q": "Hi?", "sys": "Be brief."}, {"q": "Bye?"}]
    p = _write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = load_config(ROOT / "configs/quickstart.yaml", [
        f"run_dir={tmp_path}", f"model={tiny_model}", f"prompts={p}", "prompts_columns.prompt=q",
        "prompts_columns.system=sys", "prompts_dedup=first", "generate.system_prompt=Config.", "generate.n=1",
        "generate.max_tokens=2"])
    m = json.loads(generate.run(cfg).read_text())
    assert m["prompts"] == {"rows": 3, "duplicates_dropped": 1, "ids_derived": 2}
    df = pl.read_parquet(sorted((tmp_path / "round-0" / "candidates").glob("part-*.parquet")))
    assert sorted(c[0]["content"] for c in df["messages"].to_list()) == ["Be brief.", "Config."]


def test_new_prompt_keys_at_their_defaults_leave_a_finished_stage_s_fingerprint_as_it_was(tmp_path):
    """Runs made before prompts_columns/prompts_dedup existed are not redone by an upgrade: at their
    defaults the keys are not part of generate's or evaluate's fingerprint; set, they are."""
    from rlaif.fingerprint import made_from

    base = [f"run_dir={tmp_path}", "prompts=tests/assets/prompts.jsonl", "evaluate.prompts=tests/assets/prompts.jsonl"]
    for stage in ("generate", "evaluate"):
        parts = made_from(load_config(ROOT / "configs/quickstart.yaml", base), 0, stage)["parts"]
        assert not [k for k in parts if "prompts_columns" in k or "prompts_dedup" in k], (stage, sorted(parts))
    parts = made_from(load_config(ROOT / "configs/quickstart.yaml", base + ["evaluate.prompts_dedup=first"]), 0,
                      "evaluate")["parts"]
    assert "evaluate.prompts_dedup" in parts


# ----------------------------------------------------------------------------- check data (issue 24)

IO_CASE = {"stdin": "2 3\n", "stdout": "5\n"}


def test_prompt_data_gives_tests_and_reference_for_read_prompts_ids(tmp_path):
    rows = [{"prompt_id": "add", "prompt": "Write add.", "tests": ["assert add(1, 2) == 3", IO_CASE]},
            {"prompt": "What is 6*7?", "reference": 42},  # id derived from the conversation; a number kept as text
            {"prompt": "What is 6*7?", "reference": "forty-two"},  # the same prompt again: dedup first drops it
            {"prompt": "Name a colour.", "reference": " ", "tests": []}]  # blank and empty: no data
    p = _write_jsonl(tmp_path / "p.jsonl", rows)
    data = prompt_data(p, dedup="first")
    assert list(data) == read_prompts(p, dedup="first")["prompt_id"].to_list()
    derived = stable_id([{"role": "user", "content": "What is 6*7?"}])
    assert data == {"add": {"tests": ["assert add(1, 2) == 3", IO_CASE], "reference": None},
                    derived: {"tests": None, "reference": "42"},
                    stable_id([{"role": "user", "content": "Name a colour."}]): {"tests": None, "reference": None}}
    with pytest.raises(UserError, match="line 3: field prompt_id: duplicate"):
        prompt_data(p)  # the same dedup rule as read_prompts


def test_prompt_data_reads_tests_from_csv_json_text_parquet_lists_and_mapped_columns(tmp_path):
    tests = ["assert f() == 1", IO_CASE]
    pl.DataFrame({"id": ["a"], "q": ["Write f."], "checks": [json.dumps(tests)], "answer": ["1.5"]}) \
        .write_csv(tmp_path / "p.csv")
    cols = {"prompt_id": "id", "prompt": "q", "tests": "checks", "reference": "answer"}
    assert prompt_data(tmp_path / "p.csv", columns=cols) == {"a": {"tests": tests, "reference": "1.5"}}
    pl.DataFrame({"prompt_id": ["a", "b"], "prompt": ["x", "y"], "tests": [["assert 1"], None]}) \
        .write_parquet(tmp_path / "p.parquet")
    assert prompt_data(tmp_path / "p.parquet") == {"a": {"tests": ["assert 1"], "reference": None},
                                                   "b": {"tests": None, "reference": None}}
    assert prompt_data(tmp_path / "p.csv", columns={**cols, "tests": None})["a"]["tests"] is None  # null: ignored


@pytest.mark.parametrize("row, columns, needle", [
    ({"tests": 5}, {}, "line 1: field tests: expected a list of tests, got int"),
    ({"tests": ["assert 1", 3]}, {}, r"line 1: field tests\[1\]: expected Python source"),
    ({"tests": [{"stdin": "1"}]}, {}, r"line 1: field tests\[0\]: expected Python source .* \{\"stdin\": str"),
    ({"tests": [{"stdin": "1", "stdout": 2}]}, {}, r"field tests\[0\]"),
    ({"tests": "assert f()"}, {}, "line 1: field tests: not a JSON list of tests"),
    ({"checks": {"a": 1}}, {"tests": "checks"}, r"line 1: field checks \(tests\): expected a list of tests, got dict"),
    ({"reference": [1]}, {}, "line 1: field reference: expected a string or a number, got list"),
    ({"reference": True}, {}, "field reference: expected a string or a number, got bool"),
])
def test_bad_check_data_names_file_row_and_field(tmp_path, row, columns, needle):
    p = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", **row}])
    with pytest.raises(UserError, match=needle) as e:
        prompt_data(p, columns=columns)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)

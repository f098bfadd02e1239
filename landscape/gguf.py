"""GGUF checkpoints wherever a checkpoint goes: converted once to an ordinary safetensors checkpoint, and said so.

A path is a GGUF checkpoint when it is a ``.gguf`` file or a directory holding exactly one ``.gguf`` file and no
``config.json``. :func:`resolve_checkpoint` turns it into a safetensors checkpoint directory, converted once
(transformers' GGUF loader, which needs the ``gguf`` package, dequantises every tensor to fp32) and cached by the
file's content hash under ``<cache>/gguf/``; every command that reads a checkpoint (``--aligned``, ``--base``,
``--harmful``, ``directions compute``, ``asft.train --aligned``, judges' paths, content hashes) goes through it.
The converted directory holds ``landscape_weights.json``: the GGUF file, its sha256, its quantisation (e.g.
``MOSTLY_Q4_1``) and the dtype it was dequantised to; the model loaded from it carries that record
(``model.landscape_weights``), and every scan and EPL run stores it (``weights`` in ``run.json``), so a result
says it was measured on dequantised quantised weights, not the original release.

    python -m landscape.gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2/   # to an ordinary checkpoint
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_RECORD = "landscape_weights.json"


def gguf_file(path: str | Path) -> Path | None:
    """The ``.gguf`` file ``path`` names (itself, or the one inside a directory without a config.json), else None."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise ValueError(f"{p} holds {len(found)} .gguf files ({found[0].name}, ...): name the one to use")
        return found[0] if found else None
    return None


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "GGUF checkpoints need the gguf package: pip install 'safety-landscape[gguf]' (or pip install gguf)"
        ) from e


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def read_header(path: Path):
    """The GGUF file's reader (header, metadata and tensor table), or a ValueError naming the file when it is
    truncated or not GGUF at all: transformers' own reader would stop with a bare ``struct.error``."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises struct.error, ValueError, IndexError, ... on damaged files
        size = path.stat().st_size
        raise ValueError(f"{path}: not a readable GGUF file ({size} bytes; truncated or damaged?): {e}") from None


def quantization(path: Path) -> dict:
    """The GGUF file's declared file type and its tensors' quantisation types (counts)."""
    import gguf

    reader = read_header(path)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        name = gguf.GGMLQuantizationType(t.tensor_type).name
        counts[name] = counts.get(name, 0) + 1
    file_type = None
    f = reader.fields.get("general.file_type")
    if f is not None:
        code = int(f.parts[f.data[0]][0])
        try:
            file_type = gguf.LlamaFileType(code).name
        except ValueError:
            file_type = str(code)
    return {"file_type": file_type, "tensor_types": counts}


def default_gguf_cache() -> Path:
    from .io import default_cache_dir

    return default_cache_dir() / "gguf"


def convert_gguf(
    path: str | Path, out: str | Path | None = None, progress: bool = False, cache: str | Path | None = None
) -> Path:
    """Write the GGUF checkpoint at ``path`` as a safetensors checkpoint (fp32, with its tokenizer) in ``out``
    (default: ``cache``, else the user cache's ``gguf/``, keyed by the file's sha256; a converted one is reused).
    Returns the directory.

    The config's ``quantization_config`` (which says the weights came from GGUF) is dropped, as
    ``save_pretrained`` needs; what it said is kept in ``landscape_weights.json``."""
    import shutil
    import tempfile

    src = gguf_file(path)
    if src is None:
        raise ValueError(f"{path} is not a GGUF checkpoint (a .gguf file, or a directory holding one)")
    _require_gguf()
    quant = quantization(src)  # reads the header first: a damaged file is an error naming it, before any load
    digest = file_sha256(src)
    where = Path(cache) if cache is not None else default_gguf_cache()
    target = Path(out) if out is not None else where / f"{src.stem}-{digest[:16]}"
    if (target / WEIGHTS_RECORD).is_file():
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already exists and is not a converted GGUF checkpoint")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if not progress:
        hf_logging.set_verbosity_error()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    # The weights are plain fp32 tensors now; the loader's GGUF "quantizer" would refuse to save them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]
    record = {
        "format": "gguf",
        "source": str(src.resolve()),
        "sha256": digest,
        **quant,
        "dequantized_to": "float32",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / WEIGHTS_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        for f in tmp.iterdir():
            f.chmod(0o644)  # save_pretrained may write 0600 files; checkpoints are meant to be shared
        tmp.chmod(0o755)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` as a checkpoint directory: a GGUF checkpoint converted (once, cached), anything else unchanged."""
    p = Path(path)
    return convert_gguf(p) if gguf_file(p) is not None else p


def weights_record(path: str | Path) -> dict | None:
    """What ``landscape_weights.json`` says about a converted checkpoint's weights (None for an ordinary one)."""
    f = Path(path) / WEIGHTS_RECORD
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise ValueError(f"{f}: not a weights record ({e})") from None


@dataclass
class GgufArgs:
    """Arguments of ``python -m landscape.gguf``."""

    gguf: str = field(metadata={"help": "a .gguf file, or a directory holding one"})
    out: str = field(metadata={"help": "directory to write the safetensors checkpoint to (must not exist)"})


def run(args: GgufArgs) -> Path:
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise FileExistsError(f"--out {args.out!r} already exists and is not empty")
    return convert_gguf(args.gguf, args.out)


def _print(out: Path) -> None:
    rec = weights_record(out)
    print(f"wrote {out} (from {rec['source']}, {rec['file_type']}, dequantised to {rec['dequantized_to']})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.gguf``."""
    from .cli import command

    return command([GgufArgs], run, "python -m landscape.gguf", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())

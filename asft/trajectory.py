"""Where a fine-tune goes while it trains: the update ΔW_t = W_t − W_aligned, measured every K steps.

Per point (``trajectory.json`` beside the model, and the Trainer's log as ``trajectory/<name>``):

- ``norm``: ‖ΔW_t‖ over the trained weights (ΔW is zero elsewhere); with LoRA, ΔW = s·B·A of each adapted module;
- ``cos_d_aligned``: cos(ΔW_t, d_aligned), d_aligned = θ_aligned − θ_base over every tensor (Table 1's cosine,
  taken along the way; needs ``--base``);
- ``share``: the premise check's measure (:mod:`landscape.organism.premise`): per q_proj / v_proj module, the
  share of ΔW_t's energy inside d_aligned's top-8 left singular subspace, averaged over modules, beside
  ``share_null`` (the same share for 20 seeded random subspaces of rank 8) and ``above_null_q95`` (modules above
  the null's 95th percentile, of ``modules``);
- ``alpha``, ``beta``, ``residual``: ΔW_t's least-squares coordinates in the plane of two given directions (a 2-D
  map's θ₀ + α·d₁ + β·d₂, the directions as the map normalised them) and the norm of the part the plane does
  not hold, so a point drawn on the map says how far off the plane it lies; ``cos_plane_1`` / ``cos_plane_2``:
  cos(ΔW_t, d₁) and cos(ΔW_t, d₂).

Reading W_aligned and the directions is streamed from disk tensor by tensor (nothing the size of the model is
held beside it); the subspaces are computed once.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

FILE = "trajectory.json"


class Trajectory:
    """Measures ΔW_t of a model in training (see the module docstring).

    Args:
        aligned: the checkpoint training started from.
        base: the base checkpoint (d_aligned = aligned − base), or None.
        d_aligned: without ``base``, a saved d_aligned direction (the anchor's file); with neither, no cosine or
            share.
        plane: zero or two saved (normalised) directions for the coordinates.
        k, draws, modules: the share's rank, null draws and module kinds (the premise check's).
    """

    def __init__(self, aligned, base=None, plane=(), k=None, draws=None, modules=None, d_aligned=None):
        from landscape.directions import difference, load_direction
        from landscape.geometry import top_left_singular
        from landscape.organism import premise
        from landscape.tensors import open_store

        if len(plane) not in (0, 2):
            raise ValueError(f"--trajectory_plane takes two saved directions, got {len(plane)}")
        self.k, self.draws = k or premise.K, draws or premise.DRAWS
        self.kinds = tuple(modules or premise.MODULES)
        self.aligned = open_store(aligned)
        if base is not None:
            self.d_aligned = difference(base, aligned, name="d_aligned", lazy=True)
        else:
            self.d_aligned = None if d_aligned is None else load_direction(d_aligned)
        self.U: dict[str, torch.Tensor] = {}
        self.d_norm = None
        self.d_names = set() if self.d_aligned is None else set(self.d_aligned.names())
        if self.d_aligned is not None:
            sq = 0.0
            for n in self.d_aligned.names():
                t = self.d_aligned.get(n).double()
                sq += float(t.square().sum())
                if t.ndim == 2 and n.endswith("weight") and any(f".{m}." in n for m in self.kinds):
                    self.U[n] = top_left_singular(t, self.k)
            self.d_norm = math.sqrt(sq)
        self.plane = [load_direction(p) if isinstance(p, (str, Path)) else p for p in plane]
        self.gram = None
        if self.plane:
            from landscape.geometry import dot

            a, b = self.plane
            self.gram = torch.tensor([[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]], dtype=torch.float64)
        self.points: list[dict] = []

    def definition(self) -> dict:
        return {
            "update": "W_t - W_aligned over the trained weights (LoRA: s*B*A)",
            "k": self.k,
            "draws": self.draws,
            "modules": list(self.kinds),
            "d_aligned": self.d_aligned is not None,
            "plane": [d.name for d in self.plane],
        }

    def point(self, updates, step: int) -> dict:
        """Measure one ΔW_t at training step ``step`` from ``updates``, (checkpoint tensor name, update) pairs taken
        one at a time (a generator holds one tensor at once); the point is kept in :attr:`points`."""
        from landscape.geometry import subspace_share, summarise_shares

        sq = inner = 0.0
        per: dict[str, dict] = {}
        rhs = [0.0] * len(self.plane)
        plane_names = [set(d.names()) for d in self.plane]
        for n, u in updates:
            u = u.double()
            sq += float(u.square().sum())
            if n in self.d_names:
                d = self.d_aligned.get(n)
                if tuple(d.shape) != tuple(u.shape):
                    shapes = f"{tuple(u.shape)}, d_aligned's {tuple(d.shape)}"
                    raise ValueError(f"trajectory: the update of {n!r} is {shapes}")
                inner += float((u * d.double()).sum())
            if n in self.U and (row := subspace_share(self.U[n], u, n, self.draws)) is not None:
                per[n] = row
            for i, d in enumerate(self.plane):
                if n in plane_names[i]:
                    rhs[i] += float((u * d.get(n).double()).sum())
        out: dict = {"step": int(step), "norm": math.sqrt(sq)}
        if self.d_aligned is not None:
            out["cos_d_aligned"] = inner / (out["norm"] * self.d_norm) if sq > 0 else None
            if per:
                sh = summarise_shares(per)
                out.update(
                    share=sh["mean_share"], share_null=sh["mean_null"], above_null_q95=sh["above_null_q95"],
                    modules=sh["modules"],
                )  # fmt: skip
        if self.plane:
            b = torch.tensor(rhs, dtype=torch.float64)
            ab = torch.linalg.solve(self.gram, b)
            out["alpha"], out["beta"] = float(ab[0]), float(ab[1])
            out["residual"] = math.sqrt(max(sq - float(ab @ b), 0.0))
            # cos(ΔW_t, each plane direction): whether the update turns towards d_harm as training goes on
            for i in range(2):
                d_i = math.sqrt(float(self.gram[i, i]))
                out[f"cos_plane_{i + 1}"] = float(b[i]) / (out["norm"] * d_i) if sq > 0 and d_i > 0 else None
        self.points.append(out)
        return out

    def full_updates(self, model):
        """(name, ΔW) of every trainable weight that the aligned checkpoint holds (full fine-tuning), one at a time."""
        have = set(self.aligned.keys())
        for n, p in model.named_parameters():
            if p.requires_grad and n in have:
                yield n, p.detach().cpu().double() - self.aligned.get(n).double()

    @staticmethod
    def lora_updates(model):
        """(checkpoint weight name, s·B·A) of every LoRA module, one at a time, in the weight's own layout
        (transposed for GPT-2's Conv1D, whose weight is stored (in, out): peft's ``fan_in_fan_out``)."""
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                B, A = mod.lora_B["default"].weight, mod.lora_A["default"].weight
                key = name.removeprefix("base_model.model.").replace(".base_layer", "") + ".weight"
                delta = (B.detach().double() @ A.detach().double()).cpu() * float(mod.scaling["default"])
                yield key, delta.T if getattr(mod, "fan_in_fan_out", False) else delta

    def save(self, out_dir: str | Path) -> Path:
        from landscape.io import atomic_write_json

        return atomic_write_json(Path(out_dir) / FILE, {"definition": self.definition(), "points": self.points})


def load_trajectory(path: str | Path) -> dict:
    """A run's ``trajectory.json`` (or the run directory holding it)."""
    from landscape.io import read_json

    p = Path(path)
    if p.is_dir():
        p = p / FILE
    if not p.is_file():
        raise FileNotFoundError(f"no trajectory at {str(p)!r}: train with --trajectory_steps > 0")
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ValueError(f"{p}: not a trajectory (needs 'points')")
    return data


def callback(trainer, traj: Trajectory, every: int):
    """A ``TrainerCallback`` that measures ``traj`` at step 0, every ``every`` steps and at the last step, and
    logs each point through the trainer (``trajectory/<name>``: the trainer's state, TensorBoard, ...)."""
    from transformers import TrainerCallback

    class TrajectoryCallback(TrainerCallback):
        def _measure(self, state) -> None:
            if not state.is_world_process_zero or (traj.points and traj.points[-1]["step"] == state.global_step):
                return
            model = trainer.model
            ups = traj.lora_updates(model) if trainer.args.mode == "lora" else traj.full_updates(model)
            pt = traj.point(ups, state.global_step)
            if state.global_step:
                # Trainer.log runs on_log, which clears control.should_log: kept, so the trainer's own log of
                # this step (loss, learning rate) still happens
                keep = trainer.control.should_log
                trainer.log({f"trajectory/{k}": v for k, v in pt.items() if k != "step" and v is not None})
                trainer.control.should_log = keep

        def on_train_begin(self, args, state, control, **kw):
            self._measure(state)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every == 0:
                self._measure(state)

        def on_train_end(self, args, state, control, **kw):
            self._measure(state)

    return TrajectoryCallback()

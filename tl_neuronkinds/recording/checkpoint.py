"""Checkpoints of a recording: a run that stops resumes where it was.

A checkpoint writes only what was counted since the previous one, as a *segment* (a
NeuronProfile of those rows), so its cost does not grow with the checkpoints already taken, and
the recorder's tables start afresh after it (memory stays flat however long the run). The
final profile is the exact merge of the segments. Layout of ``checkpoint_dir`` (one
subdirectory ``rank-R-of-W`` per rank under torch.distributed)::

    state.json      the settings a resumed run must match, the segments done, seconds spent
    plan.safetensors   the n-gram plan, once chosen, and the activations projected from its sample
    seg-000000/ ... one NeuronProfile per interval of this rank's rows
    profile/        the final profile, once the run finished (the segments are then removed)

Every file is written atomically and ``state.json`` last, so a run killed at any point
(SIGKILL included) resumes from the last complete checkpoint; a segment written but not yet
listed in ``state.json`` is ignored and removed.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tl_neuronkinds.atomic import atomic_write, atomic_write_text, write_tensors
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.recording.plan import Expected, Plan
from tl_neuronkinds.recording.profile import NeuronProfile

_STATE = "state.json"
_PLAN = "plan.safetensors"
_FINAL = "profile"


class RunCheckpoint:
    """The on-disk progress of one rank's recording (see the module docstring).

    Args:
        directory: The run's checkpoint directory.
        settings: What identifies the run (model, tokens, recording settings); a directory
            holding a run with other settings is refused.
        rank, world_size: This process's place under torch.distributed.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        settings: dict[str, Any],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        root = Path(directory)
        self.dir = root if world_size == 1 else root / f"rank-{rank}-of-{world_size}"
        self.settings = json.loads(json.dumps(settings))
        self.state: dict[str, Any] = {
            "settings": self.settings,
            "segments": [],
            "rows_done": 0,
            "seconds": 0.0,
            "finished": False,
        }
        if (self.dir / _STATE).exists():
            self._load()
        elif root.exists() and not root.is_dir():
            raise NeuronKindsError(f"checkpoint_dir {root} is a file, not a directory")

    def _load(self) -> None:
        try:
            state = json.loads((self.dir / _STATE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NeuronKindsError(f"corrupt checkpoint state {self.dir / _STATE}: {err}") from err
        if state.get("settings") != self.settings:
            theirs = state.get("settings", {})
            differ = sorted(
                k for k in {**theirs, **self.settings} if theirs.get(k) != self.settings.get(k)
            )
            raise NeuronKindsError(
                f"{self.dir} holds a recording with other settings (they differ in "
                f"{', '.join(differ)}); use another checkpoint directory or remove this one"
            )
        self.state = state
        listed = {s["name"] for s in state["segments"]}
        for orphan in self.dir.glob("seg-*"):
            if orphan.name not in listed:
                shutil.rmtree(orphan, ignore_errors=True)

    @property
    def rows_done(self) -> int:
        """This rank's rows recorded in the segments so far."""
        return int(self.state["rows_done"])

    @property
    def seconds(self) -> float:
        """Recording seconds spent by earlier sessions of this run."""
        return float(self.state["seconds"])

    @property
    def finished(self) -> bool:
        return bool(self.state["finished"])

    def plan(self) -> tuple[Plan | None, Expected | None]:
        """The plan and projected activations saved by ``save_plan``, if any."""
        path = self.dir / _PLAN
        if not path.exists():
            return None, None
        plan: Plan = {}
        expected: Expected = {}
        for name, tensor in load_file(str(path)).items():
            kind, layer, *order = name.split(".")
            if kind == "plan":
                plan[int(layer)] = tensor.bool()
            else:
                expected.setdefault(int(layer), {})[int(order[0])] = tensor
        return plan, expected

    def save_plan(self, plan: Plan, expected: Expected, seconds: float) -> None:
        """Save the plan and the activations projected from its sample."""
        tensors = {f"plan.{layer}": mask.to(torch.uint8) for layer, mask in plan.items()}
        for layer, by_order in expected.items():
            tensors.update({f"expected.{layer}.{n}": t.double() for n, t in by_order.items()})
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        atomic_write(self.dir / _PLAN, lambda tmp: write_tensors(tensors, tmp))
        self.state["seconds"] = seconds
        self._write_state()

    def add_segment(self, profile: NeuronProfile, rows_done: int, seconds: float) -> None:
        """Save the counts of this rank's rows up to ``rows_done`` not yet in a segment."""
        name = f"seg-{len(self.state['segments']):06d}"
        profile.save(self.dir / name)
        self.state["segments"].append({"name": name, "rows_done": rows_done})
        self.state.update(rows_done=rows_done, seconds=seconds)
        self._write_state()

    def segments(self) -> list[NeuronProfile]:
        return [NeuronProfile.load(self.dir / s["name"]) for s in self.state["segments"]]

    def finish(self, profile: NeuronProfile, seconds: float) -> None:
        """Save the final profile, mark the run finished, and remove the segments."""
        profile.save(self.dir / _FINAL)
        names = [s["name"] for s in self.state["segments"]]
        self.state.update(finished=True, seconds=seconds, segments=[])
        self._write_state()
        for name in names:
            shutil.rmtree(self.dir / name, ignore_errors=True)

    def final(self) -> NeuronProfile:
        """The profile of a finished run."""
        return NeuronProfile.load(self.dir / _FINAL)

    def _write_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / _STATE, json.dumps(self.state, indent=1))

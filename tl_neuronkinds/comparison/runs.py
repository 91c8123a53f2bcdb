"""The runs of a comparison: what each given run is, its label, and its model's depth.

A run is a ``NeuronProfile``, an ``Analysis`` of one, a profile directory
(``NeuronProfile.save``) or a run directory written by ``tl-neuronkinds profile``
(``recording/run_dir.py``; it must be finished). Each becomes a ``Run``: the profile, its
``Analysis`` at the comparison's cut-offs, the label, the model's number of layers (for the
relative depth of the paper's Figures 1a, 1b, 3a, 3b and 4) and where that number came from.

The model's ``n_layers`` (not the recording's: a run may record some layers only) is taken from,
in order: the model given for the run; the profile's ``meta["n_layers"]`` (recorded since this
package's profiles store it); the run directory's ``run.json`` where it recorded every layer
(then the last recorded layer is the model's last); the ``config.json`` of the checkpoint that
``run.json`` names. Where none of these is at hand it is *assumed* to end at the last recorded
layer, and the comparison says so in its notes.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_neuronkinds.checks import is_int
from tl_neuronkinds.errors import NeuronKindsError
from tl_neuronkinds.kinds.analysis import Analysis
from tl_neuronkinds.kinds.cutoffs import Cutoffs
from tl_neuronkinds.recording.profile import NeuronProfile
from tl_neuronkinds.recording.run_dir import (
    HOLDS,
    PROFILE_DIR,
    REPORT_FILE,
    RUN_FILE,
    is_run_dir,
    read_run,
)

#: Where ``n_layers`` was taken from when nothing states it (see the module docstring).
ASSUMED = "assumed: its last recorded layer"
ONE_RUN = "use `tl-neuronkinds report` / nk.report for one run"


@dataclass
class Run:
    """One run of a comparison (see the module docstring).

    Attributes:
        label: Its name in the tables and on the page.
        analysis: Its ``Analysis`` at the comparison's cut-offs (``analysis.profile``).
        n_layers: The model's number of layers.
        n_layers_from: Where ``n_layers`` was taken from (``ASSUMED`` where nothing states it).
        directory: The run or profile directory it was read from (None for an object).
        settings: ``run.json``'s settings for a run directory, else empty.
        model: The model given for it, or loaded for Figure 6 / massive activations.
    """

    label: str
    analysis: Analysis
    n_layers: int
    n_layers_from: str
    directory: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    @property
    def profile(self) -> NeuronProfile:
        return self.analysis.profile

    @property
    def report(self) -> Path | None:
        """The run directory's ``report.html``, where it exists."""
        if self.directory is None or not (self.directory / REPORT_FILE).is_file():
            return None
        return self.directory / REPORT_FILE

    def relative_depth(self, layer: int) -> float:
        """``layer / (n_layers - 1)``; 0 for a one-layer model."""
        return 0.0 if self.n_layers == 1 else layer / (self.n_layers - 1)


def _as_list(runs: Any) -> list[Any]:
    if isinstance(runs, str | os.PathLike | NeuronProfile | Analysis):
        raise NeuronKindsError(
            f"runs must be a list of runs to compare, got one ({type(runs).__name__}); {ONE_RUN}"
        )
    try:
        items = list(runs)
    except TypeError:
        raise NeuronKindsError(
            "runs must be a list of NeuronProfiles, Analyses, profile directories or run "
            f"directories, got {type(runs).__name__}"
        ) from None
    if not items:
        raise NeuronKindsError("runs is empty: give two or more runs to compare")
    if len(items) == 1:
        raise NeuronKindsError(f"a comparison needs two or more runs, got one; {ONE_RUN}")
    return items


def _read(item: Any, index: int) -> tuple[NeuronProfile | Analysis, Path | None, dict[str, Any]]:
    """The profile (or Analysis) of one given run, its directory and run.json settings."""
    if isinstance(item, NeuronProfile | Analysis):
        return item, None, {}
    if not isinstance(item, str | os.PathLike):
        raise NeuronKindsError(
            f"run {index} is a {type(item).__name__}: expected a NeuronProfile, an Analysis, a "
            "profile directory or a run directory"
        )
    path = Path(item)
    if is_run_dir(path):
        state = read_run(path)
        if state.get("finished") is not True:
            raise NeuronKindsError(
                f"{path} holds an unfinished run ({RUN_FILE} does not say finished): run the "
                "same `tl-neuronkinds profile` command again to finish it"
            )
        settings = state.get("settings")
        return NeuronProfile.load(path / PROFILE_DIR), path, dict(settings or {})
    if (path / "profile.json").is_file():
        return NeuronProfile.load(path), path, {}
    raise NeuronKindsError(
        f"{path} is neither a run directory ({HOLDS}) nor a profile directory (profile.json, "
        "as NeuronProfile.save writes)"
    )


def _labels(labels: Any, read: list[tuple[Any, Path | None, Any]]) -> list[str]:
    """The labels given, or each run's model name (else its directory's name)."""
    if labels is None:
        out = []
        for i, (source, directory, _) in enumerate(read):
            profile = source.profile if isinstance(source, Analysis) else source
            name = profile.meta.get("model_name") or (directory.name if directory else "")
            out.append(str(name) if name else f"run {i}")
    else:
        if isinstance(labels, str) or not hasattr(labels, "__len__"):
            raise NeuronKindsError(f"labels must be a list of strings, got {labels!r}")
        out = list(labels)
        if len(out) != len(read):
            raise NeuronKindsError(
                f"labels has {len(out)} names for {len(read)} runs: give one label per run"
            )
        if not all(isinstance(label, str) and label.strip() for label in out):
            raise NeuronKindsError(f"labels must be non-empty strings, got {out!r}")
    seen: dict[str, int] = {}
    for i, label in enumerate(out):
        if label in seen:
            raise NeuronKindsError(
                f"runs {seen[label]} and {i} are both labelled {label!r} (the same model?): "
                "pass labels=[...] (--labels A,B,...) to tell them apart"
            )
        seen[label] = i
    return out


def _checkpoint_layers(settings: dict[str, Any]) -> int | None:
    """``num_hidden_layers`` of the checkpoint ``run.json`` names, where it is a local folder."""
    name = settings.get("model")
    if not isinstance(name, str):
        return None
    if name == "embedded":
        from tl_neuronkinds.data import embedded_model_dir

        path = embedded_model_dir()
    else:
        path = Path(name)
    try:
        value = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if is_int(value) else None


def _n_layers(profile: NeuronProfile, model: Any, settings: dict[str, Any]) -> tuple[int, str]:
    """The model's number of layers and where it was taken from (module docstring)."""
    if model is not None:
        return int(model.cfg.n_layers), "the model given"
    stored = profile.meta.get("n_layers")
    if is_int(stored):
        return int(stored), "the profile"
    if "layers" in settings and settings["layers"] is None:
        return max(profile.layers) + 1, f"{RUN_FILE} (every layer recorded)"
    from_config = _checkpoint_layers(settings)
    if from_config is not None:
        return from_config, "the checkpoint's config.json"
    return max(profile.layers) + 1, ASSUMED


def _analysis(source: NeuronProfile | Analysis, cutoffs: Cutoffs) -> Analysis:
    """``source`` itself where it is an Analysis at ``cutoffs``, else a new Analysis."""
    if isinstance(source, Analysis) and source.cutoffs == cutoffs:
        return source
    profile = source.profile if isinstance(source, Analysis) else source
    return Analysis(profile, cutoffs)


def common_cutoffs(items: list[Any], cutoffs: Cutoffs | None) -> Cutoffs:
    """The cut-offs every run is classified with: ``cutoffs``; where None, those of the
    Analyses given (which must agree), else the paper's."""
    if cutoffs is not None:
        if not isinstance(cutoffs, Cutoffs):
            raise NeuronKindsError(f"cutoffs must be a Cutoffs, got {type(cutoffs).__name__}")
        return cutoffs
    theirs = {item.cutoffs for item in items if isinstance(item, Analysis)}
    if len(theirs) > 1:
        raise NeuronKindsError(
            "the Analyses given were made with different cut-offs; every run of a comparison is "
            "classified with the same ones: pass cutoffs=Cutoffs(...)"
        )
    return theirs.pop() if theirs else Cutoffs()


def resolve_runs(
    runs: Any, labels: Any, cutoffs: Cutoffs | None, models: Any = None
) -> tuple[list[Run], Cutoffs]:
    """Each given run as a ``Run`` at common cut-offs (see the module docstring).

    Raises:
        NeuronKindsError: Fewer than two runs, a run that is none of the accepted kinds, an
            unfinished run directory, labels of the wrong number or repeated, ``models`` of
            the wrong length, or a model that is not the run's.
    """
    items = _as_list(runs)
    chosen = common_cutoffs(items, cutoffs)
    if models is None:
        models = [None] * len(items)
    elif isinstance(models, str) or not hasattr(models, "__len__") or len(models) != len(items):
        raise NeuronKindsError(
            "models must be a list with one model (or None) per run, in the order of the runs"
        )
    read = [_read(item, i) for i, item in enumerate(items)]
    names = _labels(labels, read)
    out = []
    for label, (source, directory, settings), model in zip(names, read, models, strict=True):
        analysis = _analysis(source, chosen)
        if model is not None:
            from tl_neuronkinds.loading.identity import check_same_model

            check_same_model(model, analysis.profile)
        n_layers, where = _n_layers(analysis.profile, model, settings)
        if max(analysis.profile.layers) >= n_layers:
            raise NeuronKindsError(
                f"run {label!r} recorded layer {max(analysis.profile.layers)}, but its model has "
                f"{n_layers} layers ({where})"
            )
        out.append(Run(label, analysis, n_layers, where, directory, settings, model))
    return out, chosen


def load_model(run: Run, device: str | None = None) -> Any:
    """The model of ``run``: the one given, else the one its ``run.json`` names (loaded)."""
    if run.model is not None:
        return run.model
    name = run.settings.get("model")
    if not isinstance(name, str):
        raise NeuronKindsError(
            f"run {run.label!r} names no model (only run directories written by `tl-neuronkinds "
            "profile` do): pass its model in models=[...]"
        )
    from tl_neuronkinds.loading import load_opt

    if name == "embedded":
        from tl_neuronkinds.data import embedded_model_dir

        name = str(embedded_model_dir())
    run.model = load_opt(name, device=device)
    return run.model

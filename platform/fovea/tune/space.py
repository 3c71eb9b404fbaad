"""Search spaces: dotted config paths mapped to distributions, checked against the config schema before Ray starts.

A space is written in YAML (``tune.space``) or on the command line (``tune.space.PATH=SPEC``). A SPEC is one of::

    uniform(1, 10)          loguniform(1e-4, 1e-2)     randint(1, 8)       (Ray's randint: 8 excluded)
    quniform(0, 1, 0.1)     qloguniform(1e-4, 1e-1, 1e-4)                   qrandint(2, 16, 2)  (16 included)
    choice(soft, hard)      grid(2, 4, 8)              [soft, hard]  (= choice)
    {uniform: [1, 10]}      (the same, as a YAML mapping)

``grid`` paths are crossed with each other (every combination); the others are sampled. The distributions are
Ray Tune's own, with its conventions for the ends of integer ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from fovea.config import Config, ConfigError, build_config, set_path
from fovea.secrets import is_secret_name

RANGE_KINDS = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3, "qloguniform": 3, "qrandint": 3}
LIST_KINDS = ("choice", "grid")
# Paths a sweep cannot vary: they name the sweep's own bookkeeping, or fix the resources every trial is given.
FIXED_PREFIXES = ("job", "tune.", "track.", "scaling.", "train.name", "train.storage_path")
# PBT swaps weights between trials mid-run, so it may only mutate what leaves the model and the data order alone.
PBT_MUTABLE_PREFIXES = ("optim.", "distill.alpha", "distill.tau", "train.label_smoothing", "data.mixup", "data.cutmix")
PBT_FIXED = ("optim.name", "optim.sched", "optim.warmup_epochs", "optim.accum_steps", "optim.layer_decay")

_SPEC = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dimension:
    """One searched config path and its distribution."""

    path: str
    kind: str  # a key of RANGE_KINDS or LIST_KINDS
    args: tuple[Any, ...]  # (low, high[, q]) or the values

    def describe(self) -> str:
        return f"{self.kind}({', '.join(_show(a) for a in self.args)})"

    @property
    def numeric(self) -> bool:
        """Whether the dimension takes numbers (plotted on a numeric axis)."""
        return self.kind in RANGE_KINDS or all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in self.args
        )

    @property
    def probes(self) -> list[Any]:
        """Values that stand for the whole dimension when checking it: every listed value, or a range's ends."""
        if self.kind in LIST_KINDS:
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high]

    def to_ray(self, grid_as_choice: bool = False) -> Any:
        """The Ray Tune domain (``tune.uniform(...)``, ``tune.grid_search([...])``)."""
        from ray import tune

        if self.kind == "grid" and not grid_as_choice:
            return tune.grid_search(list(self.args))
        if self.kind in LIST_KINDS:
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)


def _number(value: Any) -> Any:
    """``"1e-4"`` to ``0.0001``: YAML 1.1 reads exponents without a dot as strings."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse_dimension(path: str, spec: Any) -> Dimension:
    """Read one space entry. Raises ``ConfigError`` naming ``tune.space.PATH``."""
    where = f"tune.space.{path}"
    if isinstance(spec, list | tuple):
        kind, args = "choice", list(spec)
    elif isinstance(spec, dict) and len(spec) == 1:
        kind, raw = next(iter(spec.items()))
        args = list(raw) if isinstance(raw, list | tuple) else [raw]
    elif isinstance(spec, str) and (match := _SPEC.match(spec)):
        kind = match.group(1)
        try:
            args = yaml.safe_load(f"[{match.group(2)}]")
        except yaml.YAMLError:
            raise ConfigError(f"{where}: cannot read the arguments of {spec!r}") from None
    else:
        raise ConfigError(
            f"{where}: {spec!r} is not a distribution; write e.g. uniform(1, 10), loguniform(1e-4, 1e-2), "
            "choice(soft, hard) or grid(2, 4, 8)"
        )
    kind = str(kind)
    args = [_number(a) for a in args]
    if kind in LIST_KINDS:
        if not args:
            raise ConfigError(f"{where}: {kind}() needs at least one value")
        return Dimension(path, kind, tuple(args))
    if kind not in RANGE_KINDS:
        known = ", ".join([*LIST_KINDS, *RANGE_KINDS])
        raise ConfigError(f"{where}: unknown distribution {kind!r} (have: {known})")
    if len(args) != RANGE_KINDS[kind] or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        shape = "low, high" + (", q" if RANGE_KINDS[kind] == 3 else "")
        raise ConfigError(f"{where}: {kind} takes {RANGE_KINDS[kind]} numbers ({shape}), got {args}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got {low} and {high}")
    if "log" in kind and low <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0, got {low}")
    if kind.endswith("randint") and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: {kind} takes integers, got {args}")
    if RANGE_KINDS[kind] == 3 and args[2] <= 0:
        raise ConfigError(f"{where}: {kind} needs a step q > 0, got {args[2]}")
    return Dimension(path, kind, tuple(args))


def _leaf_paths() -> set[str]:
    return set(Config().flat())


def parse_space(cfg: Config) -> list[Dimension]:
    """The sweep's dimensions, each checked against the config schema.

    Every path must be a config field (or ``model.kwargs.NAME``), and every probe value (each listed value, each
    end of a range) must pass the schema's own checks with the rest of ``cfg`` as it is.

    Raises:
        ConfigError: naming ``tune.space.PATH``, the value and the schema's reason.
    """
    leaves = _leaf_paths()
    base = cfg.model_dump(mode="json")
    dimensions = []
    for path, spec in cfg.tune.space.items():
        if spec is None:  # a preset's dimension switched off with tune.space.PATH=null
            continue
        kwarg = path.startswith("model.kwargs.") and path.removeprefix("model.kwargs.").isidentifier()
        if path not in leaves and not kwarg:
            import difflib

            hint = difflib.get_close_matches(path, sorted(leaves), n=1)
            raise ConfigError(
                f"tune.space.{path}: unknown config path" + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        if path.startswith(FIXED_PREFIXES) or path == "job":
            raise ConfigError(f"tune.space.{path}: a sweep cannot vary {path} (it is fixed for the whole sweep)")
        dimension = _parse_secret_dimension(path, spec) if is_secret_name(path) else parse_dimension(path, spec)
        for value in dimension.probes:
            trial = apply_values(base, {path: value})
            try:
                build_config([trial])
            except ConfigError as err:
                raise ConfigError(
                    f"tune.space.{path}: {dimension.describe()} includes {_show(value)}, which the config rejects "
                    f"({err})"
                ) from None
        dimensions.append(dimension)
    if not dimensions:
        raise ConfigError("tune.space: nothing to search; give e.g. tune.space.optim.lr='loguniform(1e-4, 1e-2)'")
    _check_search(cfg, dimensions)
    return dimensions


def _parse_secret_dimension(path: str, spec: Any) -> Dimension:
    """A dimension of a path named like a secret (``model.kwargs.class_token``): numbers and booleans only. Ray Tune
    writes every trial's values into trial names, its files and the console, so text values (a secret) are refused,
    and errors do not repeat the values."""
    where = f"tune.space.{path}"
    try:
        dimension = parse_dimension(path, spec)
    except ConfigError:
        raise ConfigError(f"{where}: not a distribution (values not shown: the name says they are secret)") from None
    if any(isinstance(value, str) for value in dimension.probes):
        raise ConfigError(
            f"{where}: text values of a name that holds a secret are not searched (Ray Tune would write them into "
            f"trial names and files); set it once as {path}=VALUE"
        )
    return dimension


def _check_search(cfg: Config, dimensions: list[Dimension]) -> None:
    search = cfg.tune.search
    if search == "grid":
        ranges = [d.path for d in dimensions if d.kind not in LIST_KINDS]
        if ranges:
            raise ConfigError(
                f"tune.search=grid: {', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}; "
                "a grid takes choice(...) or grid(...) values (or use tune.search=random or optuna)"
            )
    if search == "optuna":
        grids = [d.path for d in dimensions if d.kind == "grid"]
        if grids:
            raise ConfigError(
                f"tune.search=optuna: grid(...) for {', '.join(grids)}; Optuna samples, so write choice(...)"
            )
    if cfg.tune.scheduler == "pbt" and search == "optuna":
        raise ConfigError("tune.scheduler=pbt: PBT explores by perturbing its own population; use tune.search=random")
    if cfg.tune.scheduler == "pbt":
        for dimension in dimensions:
            path = dimension.path
            if not path.startswith(PBT_MUTABLE_PREFIXES) or path.startswith(PBT_FIXED):
                raise ConfigError(
                    f"tune.space.{path}: tune.scheduler=pbt copies weights between trials mid-run, so it can only "
                    f"vary training hyperparameters ({', '.join(p.rstrip('.') for p in PBT_MUTABLE_PREFIXES)}); "
                    "use asha or fifo to search it"
                )
    if cfg.tune.metric not in _REPORTED_METRICS:
        raise ConfigError(
            f"tune.metric: {cfg.tune.metric!r} is not reported per epoch (have: {', '.join(_REPORTED_METRICS)})"
        )


_REPORTED_METRICS = ("val_top1", "val_top5", "val_loss", "train_loss", "val_top1_ema", "val_top1_dist", "val_top1_cls")


def apply_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with each dotted path in ``values`` set."""
    import copy

    tree = copy.deepcopy(base)
    for path, value in values.items():
        set_path(tree, path, value)
    return tree


def grid_size(dimensions: list[Dimension], search: str) -> int:
    """Configs in one pass over the grid: the product of the grid sizes (all list dimensions for search=grid)."""
    sizes = [len(d.args) for d in dimensions if d.kind == "grid" or (search == "grid" and d.kind == "choice")]
    return int(__import__("math").prod(sizes)) if sizes else 1


def to_param_space(dimensions: list[Dimension], search: str) -> dict[str, Any]:
    """Ray Tune's ``param_space``: one flat key per dotted path (Tune nests dicts, not dotted names)."""
    grid_everything = search == "grid"
    space = {}
    for dimension in dimensions:
        if grid_everything:
            from ray import tune

            space[dimension.path] = tune.grid_search(list(dimension.args))
        else:
            space[dimension.path] = dimension.to_ray(grid_as_choice=search == "optuna")
    return space

"""``cgpo report``: plots and a markdown summary of one or several training runs.

A run directory (``cgpo train ... output_dir=D``) holds ``D/metrics.jsonl`` (one JSON object per step, keys as
in :mod:`cgpo.metrics`) and, when ``training.eval_every`` was on, ``D/eval.jsonl`` (one object per held-out
evaluation: ``{"step": N, "tasks": {NAME: {"n", "pass_rate", "reward", "calibrated_reward", "judges": {J:
{"violation_rate", "error_rate"}}}}}``). This module loads those files, smooths the noisy per-step curves and
writes, into one output folder:

- ``task_<name>.png`` per task: reward, calibrated reward, pass rate, violation rate per judge, KL and response
  length over steps; every run that trained the task is overlaid (one colour per run), held-out evaluations
  are markers on the panels they share with training;
- ``run.png``: loss, gradient norm, learning rate, tokens/s and step time over steps, and the mean seconds per
  step spent in each phase;
- ``summary.md``: per task and run, the first and last training values and the first and last held-out
  evaluation, with links to the figures.

Smoothing: a curve of ``n`` points is drawn raw (faint) and as a centred moving average over ``window`` points
(solid): point ``i`` is the mean of the finite values among ``x[i - (window - 1) // 2 : i + window // 2 + 1]``,
so the window shrinks at both ends and a missing value (``null`` in the file) is skipped, not counted as 0.
The summary's "first" and "last" training values are the means of the first and last ``window`` finite values,
which is what the smoothed curve shows at its ends up to the half-window shrinkage.

matplotlib is imported inside the plotting functions (with the Agg canvas, no pyplot state), so importing this
module, and ``cgpo --help``, stays light.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cgpo.errors import UserError

#: Default smoothing window (training steps) for curves and for the summary's first/last values.
DEFAULT_WINDOW = 5

#: Per-task panels: (metric suffix after ``task/<name>/``, panel title, held-out field or None, y in [0, 1]).
TASK_PANELS: tuple[tuple[str, str, str | None, bool], ...] = (
    ("reward", "reward", "reward", False),
    ("calibrated_reward", "calibrated reward", "calibrated_reward", False),
    ("pass_rate", "pass rate (all judges satisfied)", "pass_rate", True),
    ("judge", "violation rate per judge", "judge", True),
    ("kl", "KL to reference", None, False),
    ("response_length", "response length (tokens)", "response_length", False),
)

#: Run-level curves: (metric key, panel title).
RUN_PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
    ("tokens_per_s", "tokens / s"),
    ("time/step", "seconds per step"),
)

#: Phases of ``time/<phase>`` in the order the trainer runs them (see cgpo.metrics.PHASES) plus overhead.
PHASES = ("generate", "judge", "reward", "judge_wait", "forward_backward", "optimizer", "overhead")

_JUDGE_STYLES = ("-", "--", ":", "-.")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Run:
    """One training run as read from its directory.

    Attributes:
        path: The run directory.
        label: Name shown in legends and tables (the directory name, lengthened when two runs share it).
        rows: ``metrics.jsonl`` objects, one per step, sorted by step (a repeated step keeps its last line).
        evals: ``eval.jsonl`` objects sorted by step (empty when the file is absent).
        has_eval_file: Whether ``eval.jsonl`` exists.
    """

    path: Path
    label: str
    rows: list[dict[str, Any]]
    evals: list[dict[str, Any]] = field(default_factory=list)
    has_eval_file: bool = False

    @cached_property
    def tasks(self) -> list[str]:
        """Task names in order of first appearance in the metrics, then in the evaluations."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                if key.startswith("task/") and key.count("/") >= 2:
                    seen.setdefault(key.split("/")[1], None)
        for row in self.evals:
            for name in row["tasks"]:
                seen.setdefault(name, None)
        return list(seen)

    def judges(self, task: str) -> list[str]:
        """Judge labels of ``task`` seen in the metrics or the evaluations, in order of appearance."""
        seen: dict[str, None] = {}
        prefix = f"task/{task}/judge/"
        for row in self.rows:
            for key in row:
                if key.startswith(prefix) and key.endswith("/violation_rate"):
                    seen.setdefault(key[len(prefix) : -len("/violation_rate")], None)
        for row in self.evals:
            judges = _dig(row["tasks"], (task, "judges"))
            if isinstance(judges, dict):
                seen.update(dict.fromkeys(judges))
        return list(seen)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps that logged ``key`` and their values as floats (``nan`` where the file holds null)."""
        steps, values = [], []
        for row in self.rows:
            if key in row:
                steps.append(int(row["step"]))
                values.append(_as_float(row[key]))
        return steps, values

    def eval_series(self, task: str, field_path: Sequence[str]) -> tuple[list[int], list[float]]:
        """Held-out values of ``task`` at ``field_path`` (e.g. ``("judges", "math", "violation_rate")``)."""
        steps, values = [], []
        for row in self.evals:
            result = row["tasks"].get(task)
            if isinstance(result, dict):
                steps.append(int(row["step"]))
                values.append(_as_float(_dig(result, field_path)))
        return steps, values


def _dig(obj: Any, path: Sequence[str]) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a level is missing or not an object."""
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan  # null (a non-finite value at write time) or something unexpected: a gap, not a crash
    return float(value)


# ----------------------------------------------------------------------------------------------------- loading


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSON-lines file into ``(line number, object)`` pairs, skipping blank lines.

    A last line without its newline that does not parse is a line the trainer is still writing (reports of a
    live run are allowed), so it is dropped; any other bad line raises :class:`UserError` naming ``FILE:LINE``.

    Raises:
        UserError: The file cannot be read, a line is not JSON, or a line is not a JSON object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # a partial line being appended right now
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        out.append((number, obj))
    return out


def _step(path: Path, number: int, obj: dict[str, Any]) -> int:
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path}:{number}: 'step' must be a non-negative integer, got {step!r}")
    return step


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory's ``metrics.jsonl`` and, when present, ``eval.jsonl``.

    Raises:
        UserError: The directory or its ``metrics.jsonl`` is missing, empty or malformed (with file and line).
    """
    directory = Path(path)
    if not directory.exists():
        raise UserError(f"{directory}: no such run directory")
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; give a `cgpo train` output_dir")
    metrics_path = directory / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: not found; is {directory} a `cgpo train` output_dir?")
    by_step: dict[int, dict[str, Any]] = {}
    for number, obj in read_jsonl(metrics_path):
        by_step[_step(metrics_path, number, obj)] = obj  # a resumed run rewrites steps: the last line wins
    if not by_step:
        raise UserError(f"{metrics_path}: no steps logged yet")

    eval_path = directory / "eval.jsonl"
    evals: dict[int, dict[str, Any]] = {}
    if eval_path.is_file():
        for number, obj in read_jsonl(eval_path):
            step = _step(eval_path, number, obj)
            if not isinstance(obj.get("tasks"), dict):
                raise UserError(f"{eval_path}:{number}: expected 'tasks' to be an object of task results")
            evals[step] = obj
    return Run(
        path=directory,
        label=label or directory.resolve().name,
        rows=[by_step[s] for s in sorted(by_step)],
        evals=[evals[s] for s in sorted(evals)],
        has_eval_file=eval_path.is_file(),
    )


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Legend names: each directory's name, with parent folders prepended only where two names collide.

    ``a/x/run`` and ``b/y/run`` become ``x/run`` and ``y/run``; the same directory given twice becomes
    ``run`` and ``run (2)``.
    """
    resolved = [Path(p).resolve() for p in paths]
    distinct = list(dict.fromkeys(resolved))  # the same directory twice must not lengthen its own name
    parts = [p.parts[1:] or (str(p),) for p in distinct]  # drop the root anchor "/"
    depth = [1] * len(parts)
    while True:
        names = ["/".join(pp[-d:]) for pp, d in zip(parts, depth, strict=True)]
        clashing = {name for name in names if names.count(name) > 1}
        grown = False
        for i, name in enumerate(names):
            if name in clashing and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not clashing or not grown:
            break
    by_path = dict(zip(distinct, names, strict=True))
    counts: dict[str, int] = {}
    unique = []
    for path in resolved:
        label = by_path[path]
        counts[label] = counts.get(label, 0) + 1
        unique.append(label if counts[label] == 1 else f"{label} ({counts[label]})")
    return unique


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Load several run directories, labelled by :func:`run_labels`."""
    return [load_run(path, label) for path, label in zip(paths, run_labels(paths), strict=True)]


# --------------------------------------------------------------------------------------------------- smoothing


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average that skips ``nan`` and shrinks at the ends.

    ``out[i] = mean(finite values of values[i - (window - 1) // 2 : i + window // 2 + 1])``, ``nan`` when that
    slice holds no finite value. ``window <= 1`` returns the values unchanged.
    """
    if window <= 1:
        return list(values)
    left, right = (window - 1) // 2, window // 2
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - left) : i + right + 1] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def first_last(values: Sequence[float], window: int) -> tuple[float, float]:
    """Means of the first and of the last ``window`` finite values (``nan`` for an empty series)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    w = max(1, min(window, len(finite)))
    return sum(finite[:w]) / w, sum(finite[-w:]) / w


# ---------------------------------------------------------------------------------------------------- plotting


def _new_figure(rows: int, cols: int, title: str) -> tuple[Any, Any]:
    """A figure on the Agg canvas (no pyplot: no global state, no GUI backend).

    Margins are fixed rather than computed by constrained layout, which draws the figure twice and doubled the
    time per figure; the panels are always a 2 x 3 grid, so fixed margins fit.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.985, top=0.9, bottom=0.15, wspace=0.28, hspace=0.45)
    return fig, [ax for row in axes for ax in row]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _curve(ax: Any, steps: list[int], values: list[float], window: int, color: Any, style: str = "-") -> None:
    """Raw values faint, their moving average solid (just the raw line when there is nothing to smooth)."""
    if not steps:
        return
    if window > 1 and len(steps) > 2:
        ax.plot(steps, values, color=color, linestyle=style, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(values, window), color=color, linestyle=style, linewidth=1.6)
    else:
        ax.plot(steps, values, color=color, linestyle=style, linewidth=1.6, marker="." if len(steps) < 3 else None)


def _eval_points(ax: Any, steps: list[int], values: list[float], color: Any) -> None:
    if steps:
        ax.plot(steps, values, linestyle="none", marker="o", markersize=6, color=color, markeredgecolor="black")


def _legend(fig: Any, runs: Sequence[Run], colors: Sequence[Any], with_eval: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=2) for c in colors]
    labels = [run.label for run in runs]
    if with_eval:
        handles.append(Line2D([], [], linestyle="none", marker="o", color="gray", markeredgecolor="black"))
        labels.append("held-out eval")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)


def plot_task(task: str, runs: Sequence[Run], colors: Sequence[Any], window: int, path: Path) -> None:
    """Write the per-task figure for the runs that have ``task`` (each keeps its colour from ``colors``)."""
    from matplotlib.lines import Line2D

    present = [(run, color) for run, color in zip(runs, colors, strict=True) if task in run.tasks]
    fig, axes = _new_figure(2, 3, f"task {task}")
    judges: dict[str, None] = {}
    for run, _ in present:
        judges.update(dict.fromkeys(run.judges(task)))
    styles = {judge: _JUDGE_STYLES[i % len(_JUDGE_STYLES)] for i, judge in enumerate(judges)}
    any_eval = False
    for ax, (metric, title, eval_field, unit_range) in zip(axes, TASK_PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4), useOffset=False)  # a KL of 3e-4 stays narrow
        if unit_range:
            ax.set_ylim(-0.03, 1.03)
        for run, color in present:
            if metric == "judge":
                for judge in run.judges(task):
                    steps, values = run.series(f"task/{task}/judge/{judge}/violation_rate")
                    _curve(ax, steps, values, window, color, styles[judge])
                    e_steps, e_values = run.eval_series(task, ("judges", judge, "violation_rate"))
                    _eval_points(ax, e_steps, e_values, color)
                    any_eval = any_eval or bool(e_steps)
                continue
            _curve(ax, *run.series(f"task/{task}/{metric}"), window, color)
            if eval_field is not None:
                e_steps, e_values = run.eval_series(task, (eval_field,))
                _eval_points(ax, e_steps, e_values, color)
                any_eval = any_eval or bool(e_steps)
        if metric == "judge" and len(styles) > 1:  # line style names the judge; colour still names the run
            handles = [Line2D([], [], color="black", linestyle=s) for s in styles.values()]
            ax.legend(handles, list(styles), fontsize=8, loc="best")
        elif metric == "judge" and styles:
            ax.set_title(f"violation rate ({next(iter(styles))})", fontsize=10)
    _legend(fig, [run for run, _ in present], [color for _, color in present], any_eval)
    fig.savefig(path, dpi=100)


def plot_run(runs: Sequence[Run], colors: Sequence[Any], window: int, path: Path) -> None:
    """Write the run-level figure: loss, gradient norm, lr, tokens/s, step time, mean seconds per phase."""
    fig, axes = _new_figure(2, 3, "training")
    for ax, (key, title) in zip(axes, RUN_PANELS, strict=False):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        # A learning rate of 2e-4 in plain notation widens the tick labels into the next panel.
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4), useOffset=False)
        for run, color in zip(runs, colors, strict=True):
            _curve(ax, *run.series(key), window, color)
    ax = axes[len(RUN_PANELS)]
    ax.set_title("mean seconds per step, by phase", fontsize=10)
    height = 0.8 / len(runs)
    for i, (run, color) in enumerate(zip(runs, colors, strict=True)):
        means = []
        for phase in PHASES:
            finite = [v for v in run.series(f"time/{phase}")[1] if math.isfinite(v)]
            means.append(sum(finite) / len(finite) if finite else 0.0)
        positions = [p - 0.4 + height * (i + 0.5) for p in range(len(PHASES))]
        ax.barh(positions, means, height=height, color=color)
    ax.set_yticks(range(len(PHASES)), [phase.replace("_", "\n") for phase in PHASES], fontsize=8)
    ax.invert_yaxis()  # phases read top to bottom in the order they run
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3, axis="x")
    _legend(fig, runs, colors, with_eval=False)
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------------- summary


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "–"


def _change(first: float, last: float) -> str:
    """``first → last (±delta)``; one value when the series has a single point."""
    if not (math.isfinite(first) and math.isfinite(last)):
        return _fmt(last if math.isfinite(last) else first)
    return f"{_fmt(first)} → {_fmt(last)} ({last - first:+.3f})"


def _train_row(run: Run, task: str, window: int) -> tuple[list[str], tuple[float, float, float, float]]:
    steps = run.series(f"task/{task}/pass_rate")[0] or run.series(f"task/{task}/reward")[0]
    span = f"{steps[0]}–{steps[-1]}" if steps else "–"
    ends = {m: first_last(run.series(f"task/{task}/{m}")[1], window) for m in ("pass_rate", "reward", "kl")}
    cells = [run.label, span, *(_change(*ends[m]) for m in ("pass_rate", "reward", "kl"))]
    return cells, (*ends["pass_rate"], *ends["reward"])


def _eval_row(run: Run, task: str) -> tuple[list[str], tuple[float, float, float, float]] | None:
    points = [row for row in run.evals if isinstance(row["tasks"].get(task), dict)]
    if not points:
        return None
    before, after = points[0]["tasks"][task], points[-1]["tasks"][task]
    single = len(points) == 1

    def ends(result_path: Sequence[str]) -> tuple[float, float]:
        last = _as_float(_dig(after, result_path))
        return (math.nan if single else _as_float(_dig(before, result_path))), last

    pass_rate, reward = ends(("pass_rate",)), ends(("reward",))
    judges = ", ".join(f"{judge} {_change(*ends(('judges', judge, 'violation_rate')))}" for judge in run.judges(task))
    span = str(points[0]["step"]) if single else f"{points[0]['step']} → {points[-1]['step']}"
    n = after.get("n", "–")
    cells = [run.label, span, str(n), _change(*pass_rate), _change(*reward), judges or "–"]
    return cells, (*pass_rate, *reward)


def _eval_n(run: Run, task: str) -> int | None:
    """Prompts per held-out evaluation of ``task`` (the smaller of the first and the last), when recorded."""
    sizes = [row["tasks"][task].get("n") for row in run.evals if isinstance(row["tasks"].get(task), dict)]
    ends = [size for size in (sizes[:1] + sizes[-1:]) if isinstance(size, int) and size > 0]
    return min(ends) if len(ends) == 2 else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows),
    ]


#: Smallest pass-rate drop (absolute) that the report summary calls a fall (a display rule; the training-time
#: monitor, cgpo.metrics.RewardHackingMonitor, uses a trend test instead).
MIN_PASS_DROP = 0.05


def _hacking(ends: tuple[float, float, float, float], n: int | None = None) -> bool:
    """Reward up while the pass rate falls: the reward-hacking signature CGPO guards against.

    ``ends`` is ``(first pass rate, last pass rate, first reward, last reward)``. The pass rate must fall by at
    least :data:`MIN_PASS_DROP` and, when the evaluation size ``n`` is known, by at least twice the standard
    error of a difference of two proportions over ``n`` prompts each, ``2 * sqrt(2 p (1 - p) / n)`` with ``p``
    the pooled rate: on 48 held-out prompts one or two flipped answers are noise, not a trend.
    """
    first_pass, last_pass, first_reward, last_reward = ends
    if not all(math.isfinite(v) for v in ends) or last_reward <= first_reward:
        return False
    drop = first_pass - last_pass
    if n:
        pooled = (first_pass + last_pass) / 2
        return drop >= max(MIN_PASS_DROP, 2 * math.sqrt(2 * pooled * (1 - pooled) / n))
    return drop >= MIN_PASS_DROP


def summary_markdown(runs: Sequence[Run], figures: dict[str, str], window: int) -> str:
    """The ``summary.md`` text; ``figures`` maps a task name (and ``""`` for the run figure) to its file name."""
    lines = ["# cgpo report", ""]
    lines += _table(
        ["run", "directory", "steps", "tasks", "held-out evaluations"],
        [
            [
                run.label,
                f"`{run.path}`",
                f"{run.rows[0]['step']}–{run.rows[-1]['step']}",
                ", ".join(run.tasks),
                ", ".join(f"step {row['step']}" for row in run.evals)
                or ("none" if run.has_eval_file else "no eval.jsonl"),
            ]
            for run in runs
        ],
    )
    lines += [
        "",
        (
            f"Training columns are `first → last (change)`, each the mean of the first or last {window} logged steps "
            "(the training batch of a step is small, so single steps are noisy). Held-out columns compare the first "
            "and the last evaluation in `eval.jsonl` (the first is usually step 0, before training)."
        ),
        "",
    ]
    tasks: dict[str, None] = {}
    for run in runs:
        tasks.update(dict.fromkeys(run.tasks))
    for task in tasks:
        present = [run for run in runs if task in run.tasks]
        lines += [f"## {task}", "", f"![{task}]({figures[task]})", "", "Training (per-step batches):", ""]
        train = [_train_row(run, task, window) for run in present]
        lines += _table(["run", "steps", "pass rate", "reward", "KL"], [cells for cells, _ in train])
        warnings = [f"{run.label} (training)" for run, (_, e) in zip(present, train, strict=True) if _hacking(e)]
        evals = [(run, _eval_row(run, task)) for run in present]
        eval_rows = [(run, row) for run, row in evals if row is not None]
        if eval_rows:
            lines += ["", "Held-out evaluation (first → last):", ""]
            lines += _table(
                ["run", "steps", "n", "pass rate", "reward", "violation rate per judge"],
                [row[0] for _, row in eval_rows],
            )
            warnings += [f"{run.label} (held-out)" for run, row in eval_rows if _hacking(row[1], _eval_n(run, task))]
        missing = [run.label for run, row in evals if row is None]
        if missing:
            lines += ["", f"No held-out evaluation of this task for: {', '.join(missing)}."]
        if warnings:
            lines += [
                "",
                (
                    f"Reward rose while the pass rate fell in: {', '.join(warnings)}. That is the reward-hacking "
                    "signature; check the judges and the KL threshold."
                ),
            ]
        lines.append("")
    lines += ["## Training", "", f"![training]({figures['']})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- assembly


def figure_name(task: str) -> str:
    """File name of a task's figure: ``task_<name>.png`` (characters outside ``[A-Za-z0-9_.-]`` become ``_``)."""
    return f"task_{_UNSAFE.sub('_', task)}.png"


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    window: int = DEFAULT_WINDOW,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Load the runs, write the figures and ``summary.md`` into ``out_dir``; return the written paths.

    Every run is read before anything is written, so a bad input leaves ``out_dir`` untouched.

    Raises:
        UserError: A run directory or its files are unusable, ``out_dir`` is a file, or matplotlib is missing.
    """
    if window < 1:
        raise UserError(f"--smooth must be >= 1, got {window}")
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; give a folder for --out")
    try:
        import matplotlib  # noqa: F401  (a core dependency; a broken install gets a one-line answer)
    except ImportError:
        raise UserError("cgpo report needs matplotlib: pip install matplotlib") from None
    out.mkdir(parents=True, exist_ok=True)
    colors = _colors(len(runs))
    tasks: dict[str, None] = {}
    for run in runs:
        tasks.update(dict.fromkeys(run.tasks))
    figures = {task: figure_name(task) for task in tasks}
    figures[""] = "run.png"
    written = []
    for task in tasks:
        plot_task(task, runs, colors, window, out / figures[task])
        written.append(out / figures[task])
    plot_run(runs, colors, window, out / "run.png")
    written.append(out / "run.png")
    summary = out / "summary.md"
    summary.write_text(summary_markdown(runs, figures, window), encoding="utf-8")
    written.append(summary)
    for path in written:
        log(f"wrote {path}")
    return written

"""`python -m eval.report RUN_DIR [RUN_DIR ...]`: one report on every finished stage found in the run directories.

    python -m eval.report runs/toy                        # what `python -m pipeline run recipes/toy` calls at the end
    python -m eval.report runs/toy --no-studies           # only what the stages measured (no model is loaded)
    python -m eval.report runs/toy --skip tokenizers kl                  # leave sections out
    python -m eval.report runs/toy --tokenizer-train-steps 200 --kl-samples-per-prompt 16   # heavier studies
    python -m eval.report runs/toy --kl-pair sft pretrain --output /tmp/report

The story: find the finished stage outputs (eval/collect.py: every directory with a manifest.json, grouped
by its `stage` field) -> build each section from what the stages wrote (metrics.json, log_history.json,
samples.json, best_of_n.json ...) and run the report's own studies where no stage measures the thing
(decoding strategies, tokenizers, PPO vs DPO vs SFT on the same prompts, KL estimators) -> write, into the
first RUN_DIR (or --output), `report.md`, a self-contained `report.html` (figures embedded, opens from disk),
`report.json` (every number shown, machine-readable) and the PNGs in `report_figures/`, each atomically (a
stage output directory given first gets the report beside it, in its parent, not inside it).
Sections of stages that did not run are left out and named in the overview; a section that fails is
replaced by its error message, so one broken stage output never costs the whole report.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval.collect import discover
from eval.context import Context, Options
from eval.document import Section, render_markdown
from eval.html import render_html
from pipeline.contract import MANIFEST, package_versions, write_atomic, write_json
from pipeline.errors import UserError, run_cli

logger = logging.getLogger("eval.report")

REPORT_VERSION = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from eval.sections import SECTIONS

    parser = argparse.ArgumentParser(
        prog="python -m eval.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run folders (e.g. runs/toy) or stage output directories"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the report (default: the first RUN_DIR, or its parent if it is a stage output)",
    )
    parser.add_argument("--no-studies", action="store_true", help="load no model: only what the stages measured")
    defaults = Options()
    for name in (
        "decoding_prompts",
        "decoding_max_new_tokens",
        "kl_prompts",
        "kl_samples_per_prompt",
        "kl_max_new_tokens",
        "tokenizer_documents",
        "tokenizer_train_steps",
        "seed",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=getattr(defaults, name),
            metavar="N",
            help=f"(default {getattr(defaults, name)})",
        )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="SECTION",
        choices=[module.__name__.rsplit(".", 1)[-1] for module in SECTIONS],
        help="leave these sections out (e.g. --skip tokenizers kl)",
    )
    parser.add_argument(
        "--kl-pair",
        nargs=2,
        metavar=("POLICY", "REFERENCE"),
        default=None,
        help="stage output names for the KL study (default: PPO/DPO vs SFT, else SFT vs pretrain)",
    )
    args = parser.parse_args(argv)
    for name in ("decoding_prompts", "kl_prompts", "kl_samples_per_prompt", "tokenizer_documents"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def options_from(args: argparse.Namespace) -> Options:
    values = {name: getattr(args, name) for name in Options.__dataclass_fields__ if hasattr(args, name)}
    values["studies"] = not args.no_studies
    values["kl_pair"] = tuple(args.kl_pair) if args.kl_pair else None
    values["skip"] = tuple(args.skip)
    return Options(**values)


def build_sections(ctx: Context) -> tuple[list[Section], list[dict[str, str]]]:
    """Every section that has something to show, in report order; failures become a short error section."""
    from eval.sections import SECTIONS

    sections, errors = [], []
    for module in SECTIONS:
        name = module.__name__.rsplit(".", 1)[-1]
        if name in ctx.options.skip:
            continue
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            section = module.build(ctx)
        except UserError:
            raise
        except (
            Exception
        ) as error:  # a report is written at the end of a long chain: one bad output must not cost it all
            logger.warning("section %s failed:\n%s", name, traceback.format_exc())
            errors.append({"section": name, "error": f"{type(error).__name__}: {error}"})
            section = Section(f"error-{name}", f"{name} (failed)")
            section.text(
                f"This section could not be built: `{type(error).__name__}: {error}` (the log has the traceback)."
            )
        if section is not None:
            section.data.setdefault("seconds", round(time.perf_counter() - started, 2))
            sections.append(section)
        logger.info(
            "section %-12s %5.1f s (%.1f s of CPU)",
            name,
            time.perf_counter() - started,
            time.process_time() - cpu_started,
        )
    return sections, errors


def jsonable(value: Any) -> Any:
    """Plain JSON: NaN/inf become null (json.dumps would write invalid NaN), numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def about_section(ctx: Context, seconds: float, errors: list[dict[str, str]]) -> Section:
    section = Section("about", "About this report")
    section.text(
        f"Built by `python -m eval.report {' '.join(str(d) for d in ctx.runs.run_dirs)}` in **{seconds:.1f} s** "
        f"(figures and numbers in report.json; PNGs in {ctx.figures_dir.name}/)."
    )
    section.table(["option", "value"], [[k, str(v)] for k, v in asdict(ctx.options).items()])
    if errors:
        section.text("Sections that failed: " + "; ".join(f"{e['section']}: {e['error']}" for e in errors))
    return section


def write_report(ctx: Context, title: str, sections: list[Section], report: dict[str, Any]) -> dict[str, Path]:
    out = ctx.out_dir
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    write_atomic(paths["markdown"], render_markdown(title, sections, out))
    write_atomic(paths["html"], render_html(title, sections))
    write_json(paths["json"], jsonable(report))
    return paths


def default_output(first: Path) -> Path:
    """The first run folder; for a stage output directory its parent, so that no stage's directory is written into."""
    return first.parent if (first / MANIFEST).is_file() else first


def build_report(
    run_dirs: Sequence[str | Path], output: str | Path | None = None, options: Options | None = None
) -> dict[str, Any]:
    """Build and write the report; returns report.json's content plus the written paths under `paths`."""
    started = time.perf_counter()
    runs = discover(list(run_dirs))
    if not runs.outputs:
        raise UserError(
            f"no finished stage output (a directory with manifest.json) in {', '.join(str(d) for d in run_dirs)}."
        )
    out_dir = Path(output) if output else default_output(Path(run_dirs[0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(runs, out_dir, options or Options())
    sections, errors = build_sections(ctx)
    seconds = time.perf_counter() - started
    sections.append(about_section(ctx, seconds, errors))
    title = "Training report: " + ", ".join(str(d) for d in run_dirs)
    report = {
        "report_version": REPORT_VERSION,
        "title": title,
        "run_dirs": [str(d) for d in run_dirs],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "report_seconds": round(seconds, 2),
        "options": asdict(ctx.options),
        "packages": package_versions(),
        "stages": {
            o.name: {"stage": o.stage, "path": str(o.path), "wall_time_s": o.wall_time_s} for o in runs.outputs
        },
        "missing_stages": runs.missing_stages(),
        "errors": errors,
        "sections": {section.id: section.data for section in sections},
    }
    paths = write_report(ctx, title, sections, report)
    return {**report, "paths": {k: str(v) for k, v in paths.items()}}


def format_wall_times(report: dict[str, Any]) -> str:
    outputs = report["sections"].get("overview", {}).get("outputs", [])
    total = sum(o["wall_time_s"] or 0.0 for o in outputs)
    lines = [f"{'stage output':<22} {'stage':<15} {'wall time':>10} {'share':>6}"]
    for o in outputs:
        seconds = o["wall_time_s"] or 0.0
        lines.append(
            f"{o['name']:<22} {o['stage']:<15} {seconds:>8.1f} s {100 * seconds / total if total else 0:>5.0f}%"
        )
    lines.append(
        f"{'total (stages)':<38} {total:>8.1f} s   ({total / 60:.1f} min; report {report['report_seconds']:.1f} s)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = build_report(args.run_dirs, args.output, options_from(args))
    print("\n" + format_wall_times(report))
    if report["missing_stages"]:
        print("stages not found: " + ", ".join(report["missing_stages"]))
    if report["errors"]:
        print("sections that failed: " + ", ".join(e["section"] for e in report["errors"]), file=sys.stderr)
    print(f"\nreport ({report['report_seconds']:.1f} s):")
    for path in report["paths"].values():
        print(f"  {path}")


if __name__ == "__main__":
    run_cli(main)

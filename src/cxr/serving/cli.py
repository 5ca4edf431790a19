"""The ``cxr`` command line (console script, or ``python -m cxr``).

    cxr predict scan.jpeg folder/ "more/**/*.png" --model models/cnn
    cxr predict data/raw/test --format csv --output predictions.csv --cam figures/cam
    cxr predict study.dcm --format jsonl
    cxr serve --model models:/cxr-pneumonia@champion --port 5001   # HTTP, see cxr.serving.server

``--model`` defaults to the model the ``compare`` stage selected on validation in this checkout
(``models/<name>`` of the row with ``selected`` true in ``reports/results.csv``), not the registry's
champion, which is read only when named (``--model models:/cxr-pneumonia@champion``). Output
columns: file, probability (P(PNEUMONIA), the checkpoint's temperature applied), label (at the checkpoint's
validation-chosen threshold; REFER inside its refer band, also chosen on validation; with
``--operating-point sensitivity-95``, at that point's threshold, also in the card),
error (why an input could not be read), warning (why a predicted input may not be a chest
radiograph: tiny, extreme aspect ratio, blank or constant, noise; the same checks the split stage
quarantines by), and cam (the Grad-CAM figure, with ``--cam``). stderr names the model and the data
it was trained on (the card's ``data_source``), and warns once when that was the synthetic demo data.
A file name is written as it is, except a byte that is not UTF-8 (``\\xNN``) and a backslash (``\\\\``):
:func:`cxr.serving.filenames.raw_name` gives the name's bytes back. An ``--output`` or ``--cam`` that
cannot be written is refused before any prediction is made.
Exit status: 0 all inputs predicted, 1 some input could not be read (the others are still
predicted), 2 usage or model errors.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path

from cxr.serving.server import add_parser as serve_parser

EXIT_OK, EXIT_INPUT_ERRORS, EXIT_USAGE = 0, 1, 2
CHAMPION_URI = "models:/cxr-pneumonia@champion"  # mlflow.registered_model @ mlflow.champion_alias, as shipped
FORMATS = {  # --format: the choices and their help are this one table
    "table": "aligned text columns (the default)",
    "csv": "comma-separated, a header row; a cell a spreadsheet would run as a formula starts with '",
    "jsonl": "one JSON object per line, null where a value is missing",
}
DEFAULT_MODEL = (
    "the model the compare stage selected on validation in this checkout: models/<name> of the row with "
    "selected = True in reports/results.csv (see --results, --models-dir). The registry's champion is used "
    f"only when named: --model {CHAMPION_URI}"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help with the epilog as written, and option help wrapped at spaces only: a URI such as
    models:/cxr-pneumonia@champion is never cut at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def _epilog() -> str:
    from cxr.serving.imageio import DICOM_EXTENSIONS, RASTER_EXTENSIONS

    wrap = textwrap.TextWrapper(width=88, break_on_hyphens=False, break_long_words=False, subsequent_indent="  ")
    inputs = (
        f"inputs: {' '.join(RASTER_EXTENSIONS)} images; DICOM as {' '.join(DICOM_EXTENSIONS)} or without an "
        "extension (found by its content)"
    )
    names = (
        "file names: as they are, except a byte that is not UTF-8, written \\xNN, and a backslash, "
        "written \\\\ (cxr.serving.filenames.raw_name gives the bytes back)"
    )
    status = (
        "exit status: 0 every input predicted, 1 some input could not be read (the others are still "
        "predicted), 2 a usage or model error"
    )
    lines = [
        *wrap.wrap(inputs),
        "",
        *wrap.wrap(f"default model (no --model): {DEFAULT_MODEL}"),
        "",
        "output formats (--format):",
        *(f"  {name:<6} {what}" for name, what in FORMATS.items()),
        "",
        *wrap.wrap(names),
        "",
        *wrap.wrap(status),
    ]
    return "\n".join(lines)


def _predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="P(pneumonia) for image files, folders or globs",
        description="Predict NORMAL/PNEUMONIA for JPEG, PNG, WebP, GIF, BMP, TIFF and DICOM images with a "
        "trained checkpoint, preprocessed exactly as its training data was.",
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help=f"checkpoint folder (model.pt + model.json), or a registered model such as {CHAMPION_URI}; "
        "default: the compare stage's selection in reports/results.csv (see below)",
    )
    p.add_argument(
        "--results", default="reports/results.csv", help="compare stage table used when --model is not given"
    )
    p.add_argument("--models-dir", default="models", help="folder of <model>/ checkpoints used with --results")
    p.add_argument(
        "--format",
        "-f",
        choices=tuple(FORMATS),
        default="table",
        help=f"output format: {', '.join(FORMATS)} (default: table; see below)",
    )
    p.add_argument("--output", "-o", default=None, help="write the output to this file instead of stdout")
    p.add_argument(
        "--cam",
        default=None,
        metavar="DIR",
        help="also write into DIR one PNG per image: the original beside its Grad-CAM overlay at the image's "
        "resolution, with a colour bar, P(pneumonia) and the label",
    )
    p.add_argument(
        "--operating-point",
        default=None,
        metavar="NAME",
        help="label at an operating point of the model card, such as sensitivity-95 or specificity-95 "
        "(evaluate.operating_points, chosen on validation), instead of the card's threshold and refer band",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images decoded and predicted at a time (default 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def _seeds_parser(sub) -> None:
    p = sub.add_parser(
        "seeds",
        help="mean and spread of the headline metrics over DVC experiments that differ only in seed",
        description="Read `dvc exp show --json` and summarise, per model, the experiments whose params differ "
        "only in `seed`: run them first with `dvc exp run --queue -S 'seed=1,2,3' && dvc queue start -j 1`.",
    )
    p.add_argument("--repo", default=".", help="the DVC project (default: here)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--figure", default=None, help="also write a PNG: each seed's test ROC-AUC and the mean +- sd")
    p.set_defaults(func=cmd_seeds)


def cmd_seeds(args) -> int:
    from cxr.seeds import SeedsError, main

    try:
        return main(args)
    except SeedsError as exc:
        print(f"cxr seeds: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Pediatric chest X-rays: NORMAL vs PNEUMONIA.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _predict_parser(sub)
    serve_parser(sub)
    _seeds_parser(sub)
    return parser


def format_table(df) -> str:
    """A plain aligned text table (no extra dependency)."""
    shown = df.copy()
    shown["probability"] = shown["probability"].map(
        lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
    )
    shown = shown.fillna("").astype(str)
    for col in ("error", "warning"):  # shown only when some row has one
        if col in shown.columns and not shown[col].str.len().any():
            shown = shown.drop(columns=col)
    cols = list(shown.columns)
    widths = [max(len(c), *(len(v) for v in shown[c])) if len(shown) else len(c) for c in cols]
    right = {"probability"}

    def line(values):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, v, w in zip(cols, values, widths)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line([row[c] for c in cols]) for _, row in shown.iterrows()]
    return "\n".join(out) + "\n"


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)


def spreadsheet_safe(df):
    """``df`` with every text cell that a spreadsheet would run as a formula (a file named ``=HYPERLINK(...)``)
    prefixed with ``'``, as OWASP's CSV-injection advice says; the JSONL output keeps the raw names."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype).startswith("str"):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
    return out


def render(df, fmt: str) -> str:
    if fmt == "table":
        return format_table(df)
    if fmt == "csv":
        from cxr.files import csv_text

        return csv_text(spreadsheet_safe(df), float_format="%.6f")
    if fmt == "jsonl":
        import json

        lines = []
        for rec in df.to_dict(orient="records"):
            rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
            lines.append(json.dumps(rec))
        return "\n".join(lines) + ("\n" if lines else "")
    raise ValueError(f"unknown format {fmt!r}")


def _calibration_note(predictor) -> str:
    """The card's temperature and refer band (or why it has none), the operating point, for the header line."""
    from cxr.abstention import describe_refer

    card = predictor.card
    note = f", temperature {card.temperature:.3f}" if card.temperature != 1.0 else ""
    if predictor.operating_point:
        return note + f", operating point {predictor.operating_point} (set on validation; no refer band at it)"
    refer = describe_refer(card.refer)
    if not refer and card.refer_band is not None:  # a band without its record (a card written by hand)
        refer = f"REFER for {card.refer_band[0]:.4f} <= p < {card.refer_band[1]:.4f}"
    return note + (f", {refer}" if refer else "")


def _unwritable(option: str, path: Path, folder: bool) -> str | None:
    """Why ``path`` cannot take ``option``'s output (a file, or with ``folder`` a folder), or None; checked
    before the first prediction, so that no computed result is lost on a bad name."""
    if folder and path.exists() and not path.is_dir():
        return f"{option} {path} is a file, expected a folder for the Grad-CAM figures: name a new or existing folder"
    if not folder and path.is_dir():
        return f"{option} {path} is a folder, expected a file name: name a file, such as {path / 'predictions.csv'}"
    parent = path if folder else path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return f"{option} {path}: cannot create the folder {parent} ({why}): name a path under a writable folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: the folder {parent} is not writable: name a path under a writable folder"
    return None


def _check_destinations(args) -> str | None:
    checks = [("--output", args.output, False), ("--cam", args.cam, True)]
    return next((why for opt, p, folder in checks if p and (why := _unwritable(opt, Path(p), folder))), None)


def cmd_predict(args) -> int:
    from cxr.checkpoint import synthetic_data_warning
    from cxr.serving.filenames import printable
    from cxr.serving.predict import Predictor
    from cxr.serving.which_model import ModelNotFoundError, model_folder
    from cxr.stage import progress_enabled

    if args.batch_size < 1:
        print(f"cxr predict: --batch-size must be >= 1, found {args.batch_size}", file=sys.stderr)
        return EXIT_USAGE
    unwritable = _check_destinations(args)
    if unwritable:
        print(f"cxr predict: {printable(unwritable)}", file=sys.stderr)
        return EXIT_USAGE
    progress = progress_enabled(not args.no_progress)
    try:  # a registered model is downloaded into a temporary folder, removed once it is loaded
        with model_folder(args.model, args.results, args.models_dir, progress=progress) as (model_dir, name):
            predictor = Predictor.from_dir(
                model_dir, device=args.device, name=name, operating_point=args.operating_point
            )
    except (ModelNotFoundError, FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"cxr predict: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"[cxr predict] model {predictor.name} ({predictor.arch_name}, cache {predictor.cache_size} px "
        f"{predictor.resize}, input {predictor.image_size} px, threshold {predictor.threshold:.4f}"
        f"{_calibration_note(predictor)}); "
        f"trained on {predictor.card.data_source.describe()}",
        file=sys.stderr,
    )
    synthetic = synthetic_data_warning(predictor.card.data_source)
    if synthetic:  # once per invocation, before any output: the table that follows is not a diagnosis
        print(f"cxr predict: warning: {synthetic}", file=sys.stderr)

    def report(name: str, reason: str) -> None:
        print(f"cxr predict: cannot read {name}: {reason}", file=sys.stderr)

    table = predictor.predict_paths(
        args.inputs,
        batch_size=args.batch_size,
        progress=progress,
        cam_dir=args.cam,
        on_error=report,
    )
    if args.format != "table":  # each row of a file says which model answered, trained on what
        table = table.assign(model=predictor.name, trained_on=predictor.card.data_source.describe())
    text = render(table, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    n_bad = int(table["error"].notna().sum())
    n_ok = len(table) - n_bad
    summary = f"[cxr predict] {n_ok} image(s) predicted"
    if n_ok:
        summary += f", {int((table['label'] == predictor.classes[1]).sum())} {predictor.classes[1]}"
        n_refer = int((table["label"] == "REFER").sum())  # cxr.checkpoint.REFER
        summary += f", {n_refer} REFER (inside the refer band)" if n_refer else ""
    n_warn = int(table["warning"].notna().sum()) if "warning" in table.columns else 0
    if n_warn:
        summary += f"; {n_warn} may not be a chest radiograph (see the warning column)"
    if n_bad:
        summary += f"; {n_bad} input(s) failed (see the error column)"
    if args.output:
        summary += f"; written to {args.output}"
    if synthetic:
        summary += "; by a model trained on synthetic data (see the warning above)"
    print(summary, file=sys.stderr)
    return EXIT_INPUT_ERRORS if n_bad else EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

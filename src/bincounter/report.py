"""One self-contained HTML report of a training run: training curves, the training rules that fired, system
utilisation, test metrics with the confusion matrix. Images are embedded (base64 PNG), so the file can be
mailed or attached to a ticket on its own.

The same report for a local run (`bincounter report MODEL_DIR [--output-dir DIR]`) and a SageMaker job
(`bincounter sm report JOB`, which first gathers the job's files into one folder). Each file the trainer or
SageMaker writes has one reader here; a missing file is a section that says what is missing, never an error:

  rules.json                      the trainer's training rules (bincounter.rules)
  metrics.json                    the trainer's result: best epoch, history (one row per epoch), config
  test_metrics.json               test-split metrics (bincounter.metrics.write_report) + test_confusion_matrix.png
  training_curves.png             bincounter.metrics.plot_history
  profile/system_report.json      the trainer's system sampler (--profile-steps N)
  sagemaker-profiler/             what `sm report` downloads of SageMaker's ProfilerReport rule:
                                  profiler-reports/*.json (one per built-in profiler rule) and profiler-report.html

Each result file names the `model_version` it describes. Beside a model (config.json), one that names another
model is not shown (its curves or confusion PNG neither): a WARNING line and a note at the top of the report say
so; one that names none is shown with that note.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
from pathlib import Path

from .artifact import result_mismatch
from .errors import UserError

log = logging.getLogger("bincounter")

REPORT_FILE = "report.html"
PROFILER_DIR = "sagemaker-profiler"


# ------------------------------------------------------------------------------------------- readers
def _find(dirs: list[Path], rel: str) -> Path | None:
    for d in dirs:
        p = Path(d) / rel
        if p.is_file():
            return p
    return None


def _json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None


def read_rules(dirs: list[Path]) -> dict | None:
    """rules.json: {"rules_fired": N, "fired": [{rule, epoch/step, evidence, advice}]}."""
    doc = _json(_find(dirs, "rules.json"))
    if doc is not None:
        doc.setdefault("fired", [])
        doc.setdefault("rules_fired", len(doc["fired"]))
    return doc


def read_metrics(dirs: list[Path]) -> dict | None:
    """metrics.json: {"best", "history": [epoch rows], "world_size", "config", "test"?}."""
    return _json(_find(dirs, "metrics.json"))


def read_test_metrics(dirs: list[Path]) -> dict | None:
    """test_metrics.json (accuracy, rmse, per_class_recall, confusion_matrix, expected_count ...); else the
    "test" entry of metrics.json."""
    doc = _json(_find(dirs, "test_metrics.json"))
    if doc is None:
        doc = (read_metrics(dirs) or {}).get("test")
    return doc


def read_system_report(dirs: list[Path]) -> dict | None:
    """profile/system_report.json of the trainer's sampler (cpu/rss/gpu mean+max, input wait share, hint)."""
    return _json(_find(dirs, "profile/system_report.json"))


def read_profiler_rules(dirs: list[Path]) -> dict | None:
    """SageMaker's ProfilerReport outputs under sagemaker-profiler/: each profiler-reports/<Rule>.json becomes
    {rule: {"triggered", "violations", "datapoints", "details"}}; "html" is the rule's own report if present."""
    for d in dirs:
        root = Path(d) / PROFILER_DIR
        if not root.is_dir():
            continue
        rules = {}
        for p in sorted(root.rglob("profiler-reports/*.json")):
            doc = _json(p)
            if not isinstance(doc, dict):
                continue
            rules[p.stem] = {"triggered": doc.get("RuleTriggered"), "violations": doc.get("Violations"),
                             "datapoints": doc.get("Datapoints"), "details": doc.get("Details")}
        page = next(iter(sorted(root.rglob("profiler-report.html"))), None)
        return {"rules": rules, "html": page}
    return None


def read_png(dirs: list[Path], rel: str) -> str | None:
    """A PNG as base64 text (for a data: URI), or None."""
    p = _find(dirs, rel)
    if p is None:
        return None
    data = p.read_bytes()
    if not data.startswith(b"\x89PNG"):
        return None
    return base64.b64encode(data).decode()


def belongs(doc: dict | None, name: str, model_version: str | None, notes: list[str]) -> dict | None:
    """`doc` if it describes the model `model_version` (or cannot say: noted); None if it names another model
    (noted). Each note is also a WARNING line."""
    problem = result_mismatch(doc, name, model_version) if doc is not None else None
    if problem is None:
        return doc
    log.warning("%s", problem)
    notes.append(problem)
    return doc if doc.get("model_version") is None else None


# ------------------------------------------------------------------------------------------- rendering
def _e(v) -> str:
    return html.escape(str(v))


def _num(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return _e(v)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _missing(what: str) -> str:
    return f'<p class="missing">{what}</p>'


def _section_run(metrics: dict | None, source: str) -> str:
    out = [f"<p>source: <code>{_e(source)}</code></p>"]
    if metrics:
        cfg, best = metrics.get("config") or {}, metrics.get("best") or {}
        rows = [[_e(k), _num(cfg[k])] for k in ("arch", "backend", "loss", "epochs", "batch_size", "lr", "image_size",
                                                "amp", "pretrained") if k in cfg]
        rows.append(["processes (world size)", _num(metrics.get("world_size"))])
        if best:
            rows.append(["best epoch", _num(best.get("epoch"))])
            rows.append(["best val accuracy", _num(best.get("val_acc"))])
        out.append(_table(["setting", "value"], rows))
    return "\n".join(out)


def _section_curves(metrics: dict | None, curves_png: str | None) -> str:
    out = [_img(curves_png, "training curves") or _missing("no training_curves.png")]
    history = (metrics or {}).get("history") or []
    if history:
        keys = [k for k in ("epoch", "train_loss", "val_loss", "val_acc", "val_rmse", "best_val_acc", "rules_fired")
                if any(k in h for h in history)]
        out.append(_table(keys, [[_num(h.get(k, "")) for k in keys] for h in history]))
    elif metrics is None:
        out.append(_missing("no metrics.json: the run has not finished, or this is not its model/output folder"))
    return "\n".join(out)


def _section_rules(rules: dict | None) -> str:
    if rules is None:
        return _missing("no rules.json (the run had --no-rules, did not finish, or predates the training rules)")
    fired = rules.get("fired") or []
    if not fired:
        return '<p class="ok">no training rule fired</p>'
    rows = []
    for f in fired:
        where = ", ".join(f"{k} {f[k]}" for k in ("epoch", "step") if k in f)
        ev = "<br>".join(f"{_e(k)} = {_num(v)}" for k, v in (f.get("evidence") or {}).items())
        rows.append([f"<b>{_e(f.get('rule'))}</b>", _e(where), ev, _e(f.get("advice", ""))])
    return (f'<p class="warn">{len(fired)} rule(s) fired</p>'
            + _table(["rule", "first at", "evidence", "advice"], rows))


def _stat(d) -> str:
    if not isinstance(d, dict):
        return "n/a"
    return f"mean {_num(d.get('mean'))}, max {_num(d.get('max'))}"


def _section_system(sysrep: dict | None, prof: dict | None, profiler_html_name: str | None) -> str:
    out = []
    if sysrep:
        rows = [["CPU %", _stat(sysrep.get("cpu_percent"))], ["resident memory MB", _stat(sysrep.get("rss_mb"))],
                ["GPU utilisation %", _stat(sysrep.get("gpu_util_percent"))],
                ["GPU memory MB", _stat(sysrep.get("gpu_mem_mb"))],
                ["input wait (share of train time)", _num(sysrep.get("input_wait_fraction"))],
                ["samples", _num(sysrep.get("samples"))]]
        out.append("<h3>trainer's sampler (profile/system_report.json)</h3>" + _table(["what", "value"], rows))
        if sysrep.get("hint"):
            out.append(f'<p class="warn">{_e(sysrep["hint"])}</p>')
    if prof:
        rules = prof.get("rules") or {}
        rows = [[_e(name), "<b>yes</b>" if r.get("triggered") else "no", _num(r.get("violations")),
                 _num(r.get("datapoints"))] for name, r in rules.items()]
        out.append("<h3>SageMaker ProfilerReport</h3>")
        out.append(_table(["profiler rule", "triggered", "violations", "datapoints"], rows) if rows else
                   _missing("the ProfilerReport rule has written no rule summaries (yet)"))
        usage = (rules.get("OverallSystemUsage") or {}).get("details")
        if isinstance(usage, dict):
            urows = []
            for metric, per_node in usage.items():
                if not isinstance(per_node, dict):
                    continue
                for node, stats in per_node.items():
                    if isinstance(stats, dict):
                        urows.append([_e(metric), _e(node)] + [_num(stats.get(k, "")) for k in
                                                               ("p50", "p95", "p99", "max", "min")])
            if urows:
                out.append(_table(["metric", "node", "p50", "p95", "p99", "max", "min"], urows))
        if profiler_html_name:
            out.append(f'<p>SageMaker\'s own report: <a href="{_e(profiler_html_name)}">{_e(profiler_html_name)}'
                       "</a> (next to this file)</p>")
    if not out:
        out.append(_missing("no system report: train with --profile-steps N (locally or --hp profile_steps=N), "
                            "or on SageMaker with the profiler on (the default of sm train)"))
    return "\n".join(out)


def _section_test(test: dict | None, cm_png: str | None) -> str:
    if not test:
        return _missing("no test metrics (train with --test, or the run has not finished)")
    rows = [["images", _num(test.get("n"))], ["accuracy", _num(test.get("accuracy"))],
            ["RMSE (items)", _num(test.get("rmse"))]]
    if "loss" in test:
        rows.append(["loss", _num(test["loss"])])
    exp = test.get("expected_count") or {}
    if exp:
        rows.append(["accuracy, expected-count decoding", _num(exp.get("accuracy"))])
        rows.append(["RMSE, expected count (unrounded)", _num(exp.get("rmse_unrounded"))])
    recall = test.get("per_class_recall") or {}
    out = [f'<p class="headline">test accuracy <b>{_num(test.get("accuracy"))}</b></p>',
           _table(["metric", "value"], rows)]
    if recall:
        out.append(_table(["count"] + list(recall), [["recall"] + [_num(v if v is not None else "n/a")
                                                                    for v in recall.values()]]))
    if cm_png:
        out.append(_img(cm_png, "test confusion matrix"))
    elif test.get("confusion_matrix"):
        cm = test["confusion_matrix"]
        out.append(_table(["true \\ predicted"] + [str(i + 1) for i in range(len(cm))],
                          [[str(i + 1)] + [_num(v) for v in row] for i, row in enumerate(cm)]))
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%}.missing{color:#888;font-style:italic}
.warn{color:#a40}.ok{color:#070}.headline{font-size:1.2em}code{background:#f6f6f6}"""


def render(dirs: list[Path], out: Path, title: str, source: str) -> Path:
    """Read every known file from `dirs` (first match wins) and write one HTML file to `out`."""
    dirs = [Path(d) for d in dirs]
    version, notes = (_json(_find(dirs, "config.json")) or {}).get("model_version"), []

    def pick(reader, name: str) -> tuple[dict | None, list[Path]]:
        """The first folder's file that belongs to this model (a refused one is noted and the next folder is
        read), and where it came from; no folder holding one: (None, all folders)."""
        for d in dirs:
            doc = reader([d])
            if doc is not None and (doc := belongs(doc, name, version, notes)) is not None:
                return doc, [d]
        return None, [] if any(reader([d]) is not None for d in dirs) else dirs

    metrics, m_dirs = pick(read_metrics, "metrics.json")
    rules, _ = pick(read_rules, "rules.json")
    test, t_dirs = pick(read_test_metrics, "test_metrics.json")
    # a picture comes from the folder whose JSON was taken (none when every one was refused)
    curves = read_png(m_dirs, "training_curves.png")
    cm_png = read_png(t_dirs, "test_confusion_matrix.png")
    sysrep, prof = read_system_report(dirs), read_profiler_rules(dirs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prof_html = None
    if prof and prof.get("html"):
        prof_html = "sagemaker-profiler-report.html"
        if prof["html"].resolve() != (out.parent / prof_html).resolve():
            (out.parent / prof_html).write_bytes(prof["html"].read_bytes())
    fired = (rules or {}).get("rules_fired")
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1>", f"<p>generated {when}</p>"] + [f'<p class="warn">{_e(n)}</p>' for n in notes]
    body += ["<h2>Run</h2>", _section_run(metrics, source),
            "<h2>Training curves</h2>", _section_curves(metrics, curves),
            f"<h2>Training rules{f' ({fired} fired)' if fired else ''}</h2>", _section_rules(rules),
            "<h2>System utilisation</h2>", _section_system(sysrep, prof, prof_html),
            "<h2>Test metrics</h2>", _section_test(test, cm_png)]
    out.write_text("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + _e(title) + "</title>"
                   f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return out


def local_report(model_dir: str | Path, output_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """`bincounter report MODEL_DIR [--output-dir DIR]`: the trainer's output folder (where it was given one)
    is read first, then the model folder; the report goes next to the reports unless `out` says otherwise."""
    model_dir = Path(model_dir)
    dirs = [Path(output_dir)] if output_dir else []
    dirs.append(model_dir)
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: no such directory")
    if not any(_find(dirs, f) for f in ("metrics.json", "rules.json", "test_metrics.json", "config.json")):
        raise UserError(f"{', '.join(map(str, dirs))}: no training output here (metrics.json, rules.json, "
                        "test_metrics.json); pass the --model-dir (and --output-dir) of a `bincounter train` run")
    return render(dirs, Path(out) if out else dirs[0] / REPORT_FILE, title=f"bincounter run: {model_dir.name}",
                  source=", ".join(str(d) for d in dirs))

"""MODEL_CARD.md from the card's data."""

from __future__ import annotations

import json

from mbv3_mobile.card.common import (
    NOT_MEASURED,
)
from mbv3_mobile.verify.gates import format_value, with_bounds


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _ms(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _verdict(judged) -> str:
    """A variant's gate verdict from the manifest's judged rules (pass / fail / inconclusive)."""
    if not judged:
        return "–"
    from mbv3_mobile.verify.gates import gate_verdict

    return gate_verdict(judged)


def markdown(card: dict) -> str:
    """MODEL_CARD.md: one section per part of the card, in reading order."""
    L: list[str] = []
    for section in (_model, _training, _accuracy, _parity, _latency, _deployment_and_files):
        L += section(card)
    return "\n".join(L) + "\n"


def _model(card: dict) -> list[str]:
    """Title, model table, input and output."""
    m, io = card["model"], card["io"]
    pre = io["preprocessing"]
    r = m["resolution"]
    L: list[str] = []
    L += [f"# Model card: {card['name']} ({card['format']})", ""]
    L += [f"{m['name']} (MobileNetV3-{str(m['arch']).capitalize()}, width {m['width']}"
          f"{', minimalistic' if m['minimal'] else ''}) "
          f"{'segmenting (LR-ASPP)' if card.get('task') == 'segmentation' else 'classifying'} {m['num_classes']} classes "
          f"at {r}x{r} px. "
          f"Card schema {card['schema']}, built {card['created']} from `manifest.json` "
          f"(sha256 `{card['manifest']['sha256'][:16]}…`, published {card['manifest']['created']}).", ""]
    L += ["## Model", "", "| | |", "|---|---|",
          f"| architecture | MobileNetV3-{m['arch']}, width multiplier {m['width']}, minimalistic: {'yes' if m['minimal'] else 'no'} |",
          f"| input resolution | {r}x{r} RGB |", f"| classes | {m['num_classes']} (`labels.txt`, one per line, index = output index) |",
          f"| parameters | {m['params']:,} |", f"| MACs (per image) | {m['macs'] / 1e6:.2f} M |",
          f"| source checkpoint | `{card['source_checkpoint'].get('path', '?')}` ({card['source_checkpoint'].get('format', '?')}, "
          f"sha256 `{str(card['source_checkpoint'].get('sha256', '?'))[:16]}…`) |", "",
          f"Reproduce params/MACs: `{m['reproduce']}`", ""]
    L += ["## Input and output", "",
          f"- preprocessing: resize to {r}x{r} ({pre.get('resize_rule', 'bilinear')}), then `(pixel / 255 - mean) / std` "
          f"with mean {pre.get('mean')} and std {pre.get('std')}"
          + (" — **inside the program** for this format: feed the image as is" if (io["input"] or {}).get("preprocessing_in_program") else ""),
          f"- input: `{json.dumps(io['input'])}`", f"- output: `{json.dumps(io['output'])}`",
          f"- labels: {', '.join(io['labels']['names'][:10])}{' …' if io['labels']['count'] > 10 else ''}", ""]
    return L


def _training(card: dict) -> list[str]:
    """What the checkpoint says about its training."""
    t = card["training"]
    L: list[str] = []
    L += ["## Training", ""]
    if t["status"] != "known":
        L += [f"Training data and recipe: **unknown** — {t['reason']}.", ""]
    else:
        cfg = t["config"]
        L += [f"- data: {t['data']}",
              f"- recipe: {t['recipe'] or 'custom (not a named zoo recipe)'}; {cfg.get('epochs')} epochs, "
              f"{cfg.get('optimizer')} lr {cfg.get('lr')} (warm-up {cfg.get('warmup_epochs')} epochs), batch "
              f"{cfg.get('batch_size')} x {cfg.get('processes', 1)} processes, weight decay {cfg.get('weight_decay')}, "
              f"label smoothing {_smoothing(cfg)}, EMA {cfg.get('ema_decay')}, dropout {cfg.get('dropout')}, "
              f"augmentation {'flip + shift ' + str(cfg.get('translate')) if cfg.get('augment') else 'none'}"
              f"{', random erasing ' + str(cfg['random_erasing']) if cfg.get('augment') and cfg.get('random_erasing') else ''}, "
              f"seed {cfg.get('seed')}" + (f", fine-tuned from `{cfg['init_checkpoint']}`" if cfg.get("init_checkpoint") else "")
              + (f", backbone from `{cfg['init_backbone']}`" if cfg.get("init_backbone") else ""),
              f"- validation mIoU {_pct(t.get('val_miou'))} %, pixel accuracy {_pct(t.get('val_pixel_accuracy'))} % "
              "(on the held-out validation split of training data, not the test set)" if t.get("val_miou") is not None
              else f"- validation top-1 {_pct(t.get('val_top1'))} %, top-5 {_pct(t.get('val_top5'))} % ({t.get('val_note')})"]
        if t.get("summary"):
            s = t["summary"]
            L.append(f"- trained in {s['train_seconds'] / 60:.1f} min on {s.get('world_size')} x {s.get('device')} "
                     f"process(es), {s.get('images_per_second') or 0:.0f} images/s; run folder `{t.get('run_folder')}` "
                     "(metrics.jsonl, curves.png)")
        if t.get("limitations"):
            L.append(f"- limitations: {t['limitations']}")
        L += ["", f"Reproduce: `{t['reproduce']}`", ""]
    return L


def _smoothing(cfg: dict):
    value = cfg.get("label_smoothing")
    if value is None:  # the task's default
        return 0.0 if cfg.get("task") == "segmentation" else 0.1
    return value


def _accuracy(card: dict) -> list[str]:
    """Each variant's figures against eager fp32 (the export's verify stages)."""
    if card.get("task", "classification") != "classification":
        return _task_accuracy(card)
    ex = card["export"]
    L: list[str] = []
    L += ["## Accuracy per format", "",
          "Each variant against eager PyTorch fp32 on the same real pictures (the export's verify stage).", "",
          "| variant | file | size | pictures | top-1 % | eager fp32 top-1 % (same pictures) | drop [95 % bounds] | "
          "top-1 agreement [95 % bounds] | SNR | max abs Δlogit | min cosine | gate |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for a in card["accuracy"]:
        size = _mb(a["bytes"]) if a.get("bytes") is not None else "–"
        L.append(f"| {a['variant']} | {a['artifact']} | {size} | {a['images']} | {_pct(a.get('top1'))} | "
                 f"{_pct(a.get('reference_top1'))} | {with_bounds(a, 'top1_drop')} | {with_bounds(a, 'top1_agreement')} | "
                 f"{format_value('snr_db', a.get('snr_db'))} | {a['max_abs_dlogit']:.2e} | {a['min_cosine']:.6f} | {_verdict(a.get('gate'))} |")
    if card["accuracy"]:
        a = card["accuracy"][0]
        L += [""] + [f"- {x['variant']}: {x['data']}, gate table `{x.get('gate_table') or '?'}`"
                     + (f"; layers in fp32: {', '.join(f'`{n}`' for n in x['fp32_layers'])}"
                        if x.get("fp32_layers") else "") for x in card["accuracy"]]
        L += ["", f"Evaluated in: {a['runtime']}. A negative drop means the variant scored "
              "higher than eager fp32 on these pictures. Bounds are one-sided 95 % bounds (Tango's score bounds for "
              "the paired drop, Wilson for agreement); counts are in model_card.json."]
    L += ["", f"Reproduce: `{ex['reproduce']}`", ""]
    return L


def _task_accuracy(card: dict) -> list[str]:
    """Another task's variants, in its own table (the task's figures module writes it)."""
    from mbv3_mobile.tasks import get_task

    rows = {a["variant"]: {**a, "gate": _verdict(a.get("gate"))} for a in card["accuracy"]}
    figures_of_task = get_task(card["task"]).module("figures")
    table = figures_of_task.table(
        rows, lead=("file", lambda f: f"{f['artifact']} ({_mb(f['bytes']) if f.get('bytes') is not None else '–'})"),
        verdict=True)
    L = ["## Accuracy per format", "",
         "Each variant against eager PyTorch fp32 on the same real pictures (the export's verify stage).", "", table, ""]
    L += [f"- {a['variant']}: {a['data']}, gate table `{a.get('gate_table') or '?'}`" for a in card["accuracy"]]
    picture = getattr(figures_of_task, "EXAMPLES_PICTURE", None)
    if picture and any(f["path"] == picture for f in card.get("sizes", [])):
        L += ["", f"![the first test pictures: true masks, eager fp32's and each variant's]({picture})", "",
              f"`{picture}`: the first test pictures of the verify stages, their true masks (when labelled), eager "
              "fp32's and each variant's, as the runtimes above produced them."]
    if card["accuracy"]:
        L += ["", f"Evaluated in: {card['accuracy'][0]['runtime']}. Bounds are one-sided 95 % bounds from a paired "
              "bootstrap over pictures (a picture's pixels are not independent); counts are in model_card.json."]
    return L + ["", f"Reproduce: `{card['export']['reproduce']}`", ""]


def _parity(card: dict) -> list[str]:
    """The parity matrix of every format, when one was run."""
    L: list[str] = []
    L += ["## Parity matrix (every format, same images)", ""]
    p = card["parity"]
    if not p:
        L += [f"Not run for this card. Run `{card['reproduce']['parity']}`, then "
              f"`{card['reproduce']['card'].split(' [')[0]} --parity dist/parity/{card['name']}/report`.", ""]
    elif card.get("task", "classification") != "classification":
        from mbv3_mobile.tasks import get_task

        rows = {r["row"]: r for r in p["rows"]}
        reference = (f"; reference eager fp32 mIoU {_pct(p['reference_miou'])} %" if p.get("reference_miou") is not None
                     else "")
        L += [f"{p['images']} real images ({p['data']}){reference}. Source `{p['source']}`.", "",
              get_task(card["task"]).module("figures").parity_table(rows)]
        if p["failures"]:
            L += ["", "Gate failures: " + "; ".join(p["failures"])]
        L += ["", f"Reproduce: `{p['reproduce']}`", ""]
    else:
        L += [f"{p['images']} real images ({p['data']}); reference eager fp32 top-1 {_pct(p['reference_top1'])} %. "
              f"Source `{p['source']}`.", "",
              "| format | gate table | top-1 % | drop [95 % bounds] | agreement [95 % bounds] | max abs Δlogit | min cosine | verdict |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
        for row in p["rows"]:
            if "skipped" in row:
                L.append(f"| {row['row']} | {row['precision']} | – | – | – | – | – | skipped: {row['skipped']} |")
            else:
                L.append(f"| {row['row']} | {row['precision']} | {_pct(row.get('top1'))} | {with_bounds(row, 'top1_drop')} | "
                         f"{with_bounds(row, 'top1_agreement')} | {row['max_abs_dlogit']:.2e} | {row['min_cosine']:.6f} | "
                         f"{row.get('gate') or '–'} |")
        if p["failures"]:
            L += ["", "Gate failures: " + "; ".join(p["failures"])]
        L += ["", f"Reproduce: `{p['reproduce']}`", ""]
    return L


def _latency(card: dict) -> list[str]:
    """Host and device latency, or how to measure them."""
    L: list[str] = []
    L += ["## Latency", ""]
    for section, title in (("host", "Host"), ("devices", "Devices (adb / iOS)")):
        sec = card["latency"][section]
        if sec["status"] != "measured":
            hint = card["reproduce"]["bench"] if section == "host" else card["reproduce"]["harness"]
            if hint:
                how = (f"To measure: `{hint}`" + (" on a Mac with Xcode" if "--target ios" in hint else "")
                       + f", then `{card['reproduce']['card'].split(' [')[0]} --{'bench' if section == 'host' else 'harness'} RESULT.json`.")
            elif section == "host":
                how = "`mbv3 bench` times the .pte and ONNX runtimes; Core ML runs only on Apple hardware (see Devices)."
            else:
                how = "The device harness runs .pte and .mlpackage files; use the Android or iOS export."
            L += [f"**{title}: {NOT_MEASURED}.** {how}", ""]
            continue
        L += [f"**{title}**", ""]
        L += [f"- {src.get('target')}: {src.get('device')} (`{src.get('path')}`"
              + (f", {src['created']}" if src.get("created") else "") + ")" for src in sec.get("sources", [])]
        L += ["", "| target | device | file | runtime | threads | p50 ms | p90 ms | min ms | load ms | peak RSS MB | "
              "p50 / eager fp32 | reliable |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in sec["rows"]:
            flags = row.get("flags") or []
            rel = "–" if row.get("reliable") is None else ("yes" if row["reliable"] else
                                                         "NO: " + flags[0] + (f" (+{len(flags) - 1} more)" if len(flags) > 1 else ""))
            rss = "–" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb']:.1f}"
            ratio = "–" if row.get("ratio_vs_baseline") is None else f"{row['ratio_vs_baseline']:.3g}"
            device = row["device"] if section == "devices" else "this host"  # the host is named above the table
            L.append(f"| {row['target']} | {device} | {row['artifact']} | {row['runtime']} | {row['threads']} | "
                     f"{_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['min_ms'])} | {_ms(row['load_ms'])} | {rss} | "
                     f"{ratio} | {rel} |")
        skipped = [n for src in sec.get("sources", []) for n in src.get("not_measured") or []]
        if skipped:
            L += [""] + [f"- not measured: {n['artifact']} in {n['runtime']} ({n['reason']})" for n in skipped]
        picked = {(r["artifact"], r["runtime"]): r["recommended_threads"] for r in sec["rows"]
                  if r.get("recommended_threads") and r.get("matched_by")}
        if picked:
            L += ["", "Recommended threads (the fastest count measured, only where it beats fewer threads by more than "
                  "the noise; else the smaller count):"]
            L += [f"- {artifact} in {runtime}: **{n}**" for (artifact, runtime), n in picked.items()]
        if section == "host" and any(r.get("ratio_vs_baseline") is not None for r in sec["rows"]):
            L += ["", "On a shared host the ratios to eager PyTorch (timed interleaved in the same run) are the "
                  "stable figures; absolute milliseconds move with the machine's load."]
        L += [""] + [f"Reproduce: `{c}`" for c in dict.fromkeys(row["reproduce"] for row in sec["rows"])] + [""]
    return L


def _deployment_and_files(card: dict) -> list[str]:
    """What an app must match, the files, versions and reproduce commands."""
    ex = card["export"]
    L: list[str] = []
    L += ["## Deploying", "", f"- accuracy evaluated in: {card['deployment']['runtime']}"]
    L += [f"- {n}" for n in card["deployment"]["notes"]]
    L += ["- `README.md` in this folder: loading code and the exact input recipe", ""]
    L += ["## Files and sizes", "", "| file | size | bytes | sha256 |", "|---|---:|---:|---|"]
    for s in card["sizes"]:
        digest = f"`{s['sha256'][:16]}…`" if "sha256" in s else f"directory, {s['files']} files (per-file sha256 in manifest.json)"
        L.append(f"| {s['path']} | {_mb(s['bytes'])} | {s['bytes']:,} | {digest} |")
    L += ["", f"Reproduce: `{ex['reproduce']}`", ""]
    v = card["versions"]
    L += ["## Versions (machine that exported and verified)", "",
          f"{v.get('platform')} ({v.get('machine')}): " + ", ".join(f"{k} {val}" for k, val in (v.get("versions") or {}).items()), ""]
    if card["gates"]:
        L += ["Gates of the export: " + "; ".join(f"{table}: {', '.join(rules) if isinstance(rules, list) else rules}"
                                                  for table, rules in card["gates"].items()), ""]
    L += ["## Reproduce", ""] + [f"- {k}: `{c}`" for k, c in card["reproduce"].items() if c]
    if not ex.get("exact", True):
        L.append(f"- note: the export command is {ex.get('note', 'not exact')}")
    L += ["", "`nox -s X -- ARGS` runs `mbv3 ...` in the project's pinned environment (`mbv3 export onnx ARGS` etc. "
          "work the same in an installed checkout)."]
    return L

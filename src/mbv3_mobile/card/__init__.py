"""Model card for a published artifact folder: `MODEL_CARD.md` (people) + `model_card.json` (tools).

Built from the folder's `manifest.json` (written by a package stage) plus, optionally, figures
measured later: a parity matrix (`parity.json` from `mbv3 parity`), a host benchmark
(`bench.json` from `mbv3 bench`) and device-harness results (`results.json`, schema
"mbv3-harness/1", from `python -m mobile_harness run`). The package stages write the card inside
their atomic publish; `mbv3 card FOLDER [--parity P] [--bench B] [--harness H ...]` refreshes it.
A refresh keeps the sections of the existing card that no new input replaces (the export command,
training, earlier parity/latency), so the parity and bench hooks can each add their own figures.

Nothing is invented: a latency nobody measured reads "not measured", training metadata a foreign
checkpoint does not carry reads "unknown". Every figure carries the command that reproduces it.
Bad input (no manifest, a malformed or foreign parity/bench/harness file, files that no longer
match the manifest) raises `ModelCardError` before anything is written; the two card files are each
written to a temp file and renamed into place.

model_card.json (schema "mbv3-model-card/1"), top-level keys:
  schema, created, name (folder name), format (manifest "format")
  manifest: {path, sha256, bytes, created}  -- the card is written after the manifest and pins it;
            the manifest's own file list does not include the card files
  model: {name, arch, width, minimal, num_classes, resolution, params, macs, reproduce}
  io: {input, output(s), preprocessing, labels: {count, file, names}}
  source_checkpoint: manifest's {path, sha256, format}
  training: {status: "known"|"unknown", reason?, data, recipe?, config?, val_top1?, val_top5?,
             epochs?, summary?, run_folder?, reproduce?}
  export: {pipeline, params (effective), overrides (non-default), exact (bool), reproduce}
  accuracy: [{variant, artifact, runtime, data?, images, top1, reference_top1, top1_drop_pts,
              top1_agreement, max_abs_logit_diff, mean_abs_logit_diff, min_cosine, gate?,
              fp32_layers? (PTQ mixed precision), reproduce}]  -- ONNX folders add "<variant> (.ort)" rows
  parity: null | {source, sha256, model, images, data, reference_top1, rows: [{format, precision,
              top1, top1_drop_pts, top1_agreement, max_abs_logit_diff, mean_abs_logit_diff,
              min_cosine, gate} | {format, precision, skipped}], failures, reproduce}
  latency: {host: {status: "measured"|"not measured", rows, sources}, devices: {status, rows, sources}}
           a row: {target, device, artifact, runtime, threads, p50_ms, p90_ms, min_ms, load_ms,
                   first_inference_ms, peak_rss_mb, reliable, flags, verified, recommended_threads?,
                   source, reproduce}  (recommended_threads: the bench's pick for that artifact/runtime)
  sizes: [{path, bytes, sha256 | files (a directory), reproduce}]  (manifest.json included)
  versions: manifest's {versions, platform, machine} (the machine that exported and verified)
  gates: the pipeline's gates
  reproduce: {export, info, parity, bench, harness, card}  -- one command per kind of figure

bench.json keys read (from `mbv3 bench`, consumed defensively). Schema "mbv3-bench/1":
runtimes[key] {label, file}, latency[threads].rows[key].summary {p50_ms, p90_ms, min_ms} + flags,
latency[threads].ratio_vs_eager[key], probes[key] {load_ms, first_inference_ms, peak_rss_mb},
baseline, peak.cpu, cores, platform, threads, plan. Otherwise a generic list under "rows",
"results" or "measurements" whose rows name their file by "artifact", "file", "path" or "model"
and carry "runtime", "threads", "p50_ms" (or "summary": {"p50_ms"}), optional "p90_ms", "min_ms",
"load_ms", "peak_rss_mb"/"rss_mb"; top-level optional "host"/"machine"/"device" and "command".
A measured file is matched to this folder by sha256 when it exists (bench times the pipeline
cache's copy), else by file name; rows of other files are left out and counted.
"""

from mbv3_mobile.card.build import build_card
from mbv3_mobile.card.common import CARD_JSON, CARD_MD, SCHEMA, ModelCardError
from mbv3_mobile.card.write import refresh_cards, write_card, write_card_at_publish

__all__ = ["CARD_JSON", "CARD_MD", "SCHEMA", "ModelCardError", "build_card", "refresh_cards", "write_card", "write_card_at_publish"]

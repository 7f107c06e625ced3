"""`mbv3 export <pipeline>`: run an export pipeline (android, ios, onnx, ...)."""

from __future__ import annotations


def register(sub) -> None:
    from mbv3_mobile.pipeline.spec import pipeline_files

    names = [n for n in pipeline_files() if n not in ("parity", "bench")]
    p = sub.add_parser("export", help=f"run an export pipeline ({', '.join(names)}): mbv3 export android --help",
                       add_help=False)
    p.add_argument("pipeline", nargs="?", help=f"pipeline name ({', '.join(names)}; an unambiguous prefix works) "
                                               "or a .toml path")
    p.set_defaults(func=run, passthrough=True)


def run(args, rest: list[str]) -> int:
    from mbv3_mobile.cli.options import pipeline_parser
    from mbv3_mobile.pipeline.runner import run_pipeline
    from mbv3_mobile.pipeline.spec import PipelineError, load_pipeline, pipeline_files

    if not args.pipeline or args.pipeline in ("-h", "--help"):
        names = ", ".join(n for n in pipeline_files() if n not in ("parity", "bench"))
        print(f"usage: mbv3 export PIPELINE [options]\n\npipelines: {names}\n`mbv3 export PIPELINE --help` lists its options.")
        return 0
    spec = load_pipeline(args.pipeline)
    if not any(st.publish for st in spec.stages):
        raise PipelineError(f"{spec.name!r} is not an export pipeline: run `mbv3 {spec.name}`")
    parser = pipeline_parser(spec, f"mbv3 export {spec.name}")
    parser.add_argument("--force", action="store_true", help="rerun every stage, ignoring the cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    ns = parser.parse_args(rest)
    extra = {"force": ns.force, "quiet": ns.quiet}
    overrides = {k: v for k, v in vars(ns).items() if v is not None and k not in extra}
    results = run_pipeline(spec, overrides, progress=not (ns.quiet or args.quiet), force=ns.force)
    print(f"[{spec.name}] finished in {results['_total'].seconds:.1f} s "
          f"({sum(r.cached for r in results.values())} of {len(results) - 1} stages cached)")
    return 0




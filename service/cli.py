"""`ranker`: train, analyze, bench, serve, config and example-request from one command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import what they need when they run: `ranker --help` stays light
    from pydantic import ValidationError

    from service.engine import Variant
    from service.engine.pipeline import Reparameterized
    from service.serving.fleet_config import FleetConfig, FleetConfigFile
    from service.serving.settings import Settings
    from service.store.artifact import LoadedArtifact

DEFAULT_STORE = "model_store"


def _settings_or_exit(command: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from RANKER_* and RANKER_CONFIG_FILE, or exit with one line naming each bad setting: never its
    value, which may be a secret (pydantic's own message quotes the input, e.g. a too-short admin token)."""
    from pydantic import ValidationError

    from service.serving.settings import Settings

    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        sys.exit(f"{command}: invalid settings: {_settings_problems(exc)}")
    except ValueError as exc:  # RANKER_CONFIG_FILE unreadable or not parseable, or a RANKER_* value not JSON
        sys.exit(f"{command}: invalid settings: {exc}")


def _settings_problems(exc: ValidationError) -> str:
    from service.serving.settings import ENV_PREFIX
    from service.serving.validation import field_path, problems

    lines = []
    for problem in problems(exc):
        name, detail = (str(problem.loc[0]), field_path(problem.loc[1:])) if problem.loc else ("", None)
        where = f"{ENV_PREFIX}{name.upper()}" + (f" ({detail})" if detail else "") if name else "settings"
        lines.append(f"{where}: {problem.message}")
    return "; ".join(lines)


def _load(artifact: str) -> LoadedArtifact:
    from service.store.artifact import load_artifact
    from service.store.manifest import ArtifactError

    try:
        return load_artifact(Path(artifact))
    except (ArtifactError, FileNotFoundError) as exc:
        sys.exit(f"ranker: cannot load {artifact}: {exc}")


def _build_all(loaded: LoadedArtifact) -> dict[Variant, Reparameterized]:
    from service.serving.build import build_variants

    return build_variants(loaded.model, loaded.manifest.user_features, loaded.schema.example_batch)


def cmd_train(args: argparse.Namespace) -> None:
    import time

    import torch

    from service.training.progress import PrintedProgress
    from service.training.train import train_and_save

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    path = train_and_save(args.arch, args.store, args.name, args.version, seed=args.seed, steps=args.steps,
                          progress=PrintedProgress())
    manifest = json.loads((path / "model.json").read_text())
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    print(json.dumps(manifest.get("metrics", {}), indent=2))


def cmd_analyze(args: argparse.Namespace) -> None:
    import torch

    from service.engine.analysis import Analysis, format_analysis

    torch.set_num_threads(args.threads)
    loaded = _load(args.artifact)
    analysis = Analysis(args.n, _build_all(loaded))
    if args.json:
        print(json.dumps(analysis.to_dict(), indent=2))
    else:
        print(f"model {loaded.manifest.name} {loaded.manifest.version} ({loaded.manifest.architecture})")
        print(format_analysis(analysis))


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from service.benchmark import bench_variants, format_rows

    torch.set_num_threads(args.threads)
    loaded = _load(args.artifact)
    built = _build_all(loaded)
    generator = torch.Generator().manual_seed(args.seed)
    ns = [int(x) for x in args.n.split(",")]
    rows = bench_variants(built, lambda n: loaded.schema.example_batch(n, generator), ns, args.repeats, args.warmup)
    if args.json:
        report = {"model": str(loaded.path), "threads": args.threads, "rows": [r.to_dict() for r in rows]}
        print(json.dumps(report, indent=2))
    else:
        print(f"model {loaded.manifest.name} {loaded.manifest.version}, torch threads {args.threads}, "
              f"median of {args.repeats} interleaved runs after {args.warmup} warm-up")
        print(format_rows(rows))


def cmd_package(args: argparse.Namespace) -> None:
    from service.engine.analysis import Analysis, format_analysis
    from service.store.manifest import ArtifactError
    from service.store.packaging import PackageError, package
    from service.store.user_code import UserCodeError, call_build_function

    try:
        model, example, schema, options = call_build_function(args.build)
    except UserCodeError as exc:
        sys.exit(f"ranker package: {exc}")
    if args.tasks:
        options["tasks"] = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if args.logits:
        options["scores"] = "logit"
    if "tasks" not in options:
        sys.exit("ranker package: name the tasks with --tasks click,like (or return them from the build function)")
    try:
        loaded = package(model, example, schema, store=args.store, name=args.name, version=args.version, **options)
    except (PackageError, ArtifactError, TypeError) as exc:
        sys.exit(f"ranker package: {exc}")
    print(f"wrote {loaded.path}")
    print(format_analysis(Analysis(args.n, _build_all(loaded))))


def cmd_convert(args: argparse.Namespace) -> None:
    from service.store.manifest import ArtifactError
    from service.store.versions import resolve_version
    from service.training.convert import convert_legacy

    try:
        path = convert_legacy(resolve_version(args.artifact))
    except (ArtifactError, KeyError, ValueError) as exc:
        sys.exit(f"ranker convert: {exc}")
    print(f"converted {path} to the program format")


def cmd_serve(args: argparse.Namespace) -> None:
    from service.api.server import serve
    from service.serving.hosts import served_model_names
    from service.serving.settings import ENV_PREFIX, model_location

    overrides: dict[str, Any] = {}
    if args.model is not None:  # over the RANKER_MODEL_* settings; a model folder means its latest version
        try:
            location = model_location(Path(args.model))
        except ValueError as exc:
            sys.exit(f"ranker serve: --model: {exc}")
        overrides = {"model_version": None, **{key.removeprefix(ENV_PREFIX).lower(): value
                                               for key, value in location.items()}}
    settings = _settings_or_exit("ranker serve", overrides)  # a bad setting stops start-up in one line
    try:
        served_model_names(settings)  # RANKER_MODELS=*: the store's models, no more than RANKER_MAX_MODELS
    except ValueError as exc:
        sys.exit(f"ranker serve: invalid settings: {exc}")
    serve(host=args.host, port=args.port, workers=args.workers, settings=settings)


def cmd_example_request(args: argparse.Namespace) -> None:
    from service.serving.example_request import example_request_for_store
    from service.store.manifest import ArtifactError

    model = Path(args.model) if args.model else _settings_or_exit("ranker example-request").model_path
    try:
        body = example_request_for_store(model, n=args.n, columnar=args.columnar, seed=args.seed)
    except (ArtifactError, OSError, ValueError) as exc:
        sys.exit(f"ranker example-request: cannot read the model's feature schema from {model.absolute()}: {exc}. "
                 "Run it where model_store/ is (the repository root), pass --model model_store/<name>, or set "
                 "RANKER_MODEL_STORE.")
    print(json.dumps(body))


def _fleet_config_file(args: argparse.Namespace) -> FleetConfigFile:
    from service.serving.fleet_config import FleetConfigFile

    if args.store is not None and args.name is not None:
        return FleetConfigFile(Path(args.store) / args.name)
    settings = _settings_or_exit("ranker config")
    return FleetConfigFile(Path(args.store or settings.model_store) / (args.name or settings.model_name))


def cmd_config_show(args: argparse.Namespace) -> None:
    from service.serving.fleet_config import FleetConfigError

    config_file = _fleet_config_file(args)
    try:
        config = config_file.read()
    except FleetConfigError as exc:
        sys.exit(f"ranker config show: {exc}")
    if config is None:
        print(f"no {config_file.path}: every process serves its RANKER_* settings (generation 0)", file=sys.stderr)
        return
    sys.stdout.write(config.to_json().decode())


def _config_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The fields `ranker config set` changes (shadow partially: its own fields merge with the current ones)."""
    changes: dict[str, Any] = {}
    if args.version is not None:
        changes["version"] = None if args.version == "latest" else args.version
    if args.variant is not None:
        changes["variant"] = args.variant
    if args.ab_split is not None:
        try:
            changes["ab_split"] = json.loads(args.ab_split)
        except json.JSONDecodeError as exc:
            sys.exit(f"ranker config set: --ab-split is not JSON ({exc})")
    shadow: dict[str, Any] = {}
    if args.shadow_variant is not None:
        shadow["variant"] = None if args.shadow_variant == "none" else args.shadow_variant
        if shadow["variant"] is None and args.shadow_sample_rate is None:
            shadow["sample_rate"] = 0.0
    if args.shadow_sample_rate is not None:
        shadow["sample_rate"] = args.shadow_sample_rate
    if shadow:
        changes["shadow"] = shadow
    compare: dict[str, Any] = {}
    if args.compare_sample_rate is not None:
        compare["sample_rate"] = args.compare_sample_rate
    if args.compare_top_k is not None:
        compare["top_k"] = args.compare_top_k
    if args.compare_min_overlap is not None:
        compare["min_overlap"] = None if args.compare_min_overlap == "none" else _number(args.compare_min_overlap)
    if compare:
        changes["compare"] = compare
    return changes


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        sys.exit(f"ranker config set: --compare-min-overlap takes a number in [0, 1] or 'none', got {text!r}")


def _primary(args: argparse.Namespace, config_file: FleetConfigFile, absent: FleetConfig) -> str:
    """The primary version a --canary or --rollback keeps: --version, else the file's; without a file, the
    RANKER_MODEL_VERSION of this command (the latest folder is no guess: it is usually the canary itself)."""
    if args.version not in (None, "latest"):
        return str(args.version)
    current = config_file.read()
    version = (current or absent).version
    if version is None:
        sys.exit(f"ranker config set: {config_file.path} names no version yet: name the primary with --version "
                 "(the version every process serves now)")
    return version


def _canary_changes(args: argparse.Namespace, primary: str, model_dir: Path) -> dict[str, Any]:
    """The fields of --canary, --promote or --rollback, given the primary version serving now."""
    if args.promote is not None:
        return {"version": args.promote, "versions": {}, "labels": {"stable": args.promote}}
    if args.rollback:
        return {"version": primary, "versions": {}, "labels": {"stable": primary}}
    if args.canary is None:
        return {}
    version, _, weight_text = args.canary.partition("=")
    try:
        weight = float(weight_text)
    except ValueError:
        weight = -1.0
    if not 0 < weight < 1:
        sys.exit(f"ranker config set: --canary takes VERSION=WEIGHT with 0 < WEIGHT < 1, got {args.canary!r}")
    if version == primary:
        sys.exit(f"ranker config set: --canary {version}: that is the primary version already serving; name "
                 "another version folder")
    if not (model_dir / version).is_dir():
        sys.exit(f"ranker config set: --canary {version}: no version folder {model_dir / version}")
    return {"version": primary, "versions": {primary: round(1 - weight, 12), version: weight},
            "labels": {"stable": primary, "canary": version}}


def cmd_config_set(args: argparse.Namespace) -> None:
    from service.serving.fleet_config import FleetConfig
    from service.store.artifact import load_artifact

    changes = _config_changes(args)
    config_file = _fleet_config_file(args)
    settings = _settings_or_exit("ranker config set")
    try:
        with config_file.locked():
            absent = FleetConfig.from_settings(settings)  # no file yet: what the processes serve now
            if args.canary is not None or args.promote is not None or args.rollback:
                changes = {**changes, **_canary_changes(args, _primary(args, config_file, absent),
                                                        config_file.model_dir)}
            config = config_file.next_config(changes, absent=absent, invalid=None)
            for version in config.serving_versions():  # verified here, before any process builds them
                load_artifact(config_file.model_dir / version)
            config_file.write(config)
    except ValueError as exc:  # FleetConfigError, ArtifactError
        sys.exit(f"ranker config set: {exc}")
    sys.stdout.write(config.to_json().decode())
    print(f"wrote generation {config.generation} to {config_file.path}; every process applies it within "
          f"RANKER_CONFIG_POLL_S", file=sys.stderr)


def _settings_epilog() -> str:
    """Every setting with its default, for `ranker serve --help` (reads the Settings class; no model is loaded)."""
    import textwrap

    from service.serving.settings import describe_settings

    lines = ["settings (environment variable, default):"]
    for variable, default, description in describe_settings():
        lines.append(f"  {variable} = {default}")
        lines.extend(textwrap.wrap(description, width=100, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a ranker on synthetic data and write an artifact")
    train.add_argument("--arch", default="mmoe", help="architecture: mmoe (default), dcn, dcnv2, deepfm, autoint, rdcn")
    train.add_argument("--name", default="default")
    train.add_argument("--version", default=None, help="default: the next vN")
    train.add_argument("--store", default=DEFAULT_STORE)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--threads", type=int, default=2)
    train.set_defaults(func=cmd_train)

    analyze = sub.add_parser("analyze", help="FLOPs per variant and what MaRI rewrote")
    analyze.add_argument("artifact", help="model_store/<name>[/<version>]")
    analyze.add_argument("--n", type=int, default=1000)
    analyze.add_argument("--json", action="store_true")
    analyze.add_argument("--threads", type=int, default=2)
    analyze.set_defaults(func=cmd_analyze)

    bench = sub.add_parser("bench", help="time the variants, interleaved, on the same weights and inputs")
    bench.add_argument("artifact")
    bench.add_argument("--n", default="100,1000,5000", help="comma-separated candidate counts")
    bench.add_argument("--repeats", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)

    pack = sub.add_parser("package", help="package your own trained ranker (file.py:function) into the store")
    pack.add_argument("build", help="path/to/file.py:function; the function returns (model, example_features, "
                                    "schema[, options]) or a dict of package() arguments")
    pack.add_argument("--name", required=True)
    pack.add_argument("--version", default=None, help="default: the next vN")
    pack.add_argument("--store", default=DEFAULT_STORE)
    pack.add_argument("--tasks", default=None, help="comma-separated task names, one per output column")
    pack.add_argument("--logits", action="store_true", help="the model returns logits: serve sigmoid(logit)")
    pack.add_argument("--n", type=int, default=1000, help="candidates for the FLOPs report printed at the end")
    pack.set_defaults(func=cmd_package)

    convert = sub.add_parser("convert", help="convert a format-1 artifact (architecture name) to the program format")
    convert.add_argument("artifact", help="model_store/<name>/<version> (or the model folder: latest version)")
    convert.set_defaults(func=cmd_convert)

    serve = sub.add_parser("serve", help="start the ranking service (other settings: RANKER_* environment)",
                           description="Start the ranking service. Every other setting is a RANKER_* environment "
                                       "variable (or a key of the file RANKER_CONFIG_FILE names), listed below.",
                           epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", default=None, help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default 8000")
    serve.add_argument("--workers", type=int, default=None, help="processes, each with its own copy of the model "
                                                                 "(default 1)")
    serve.add_argument("--model", default=None, metavar="PATH",
                       help="serve this model folder (its latest version) or version folder; sets RANKER_MODEL_STORE, "
                            "RANKER_MODEL_NAME and RANKER_MODEL_VERSION")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="show or change the fleet config (<store>/<name>/serving.json)")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print serving.json")
    set_ = config_sub.add_parser("set", help="write the next generation of serving.json; every process applies it")
    for parser_ in (show, set_):
        parser_.add_argument("--store", default=None, help="default: RANKER_MODEL_STORE (model_store)")
        parser_.add_argument("--name", default=None, help="default: RANKER_MODEL_NAME (default)")
    set_.add_argument("--version", default=None, help="version folder (verified first), or 'latest' (null)")
    set_.add_argument("--variant", default=None, choices=["vani", "uoi", "mari", "auto"],
                      help="the default variant; auto: per request, the form measured fastest at its size")
    set_.add_argument("--ab-split", default=None, help='JSON weights, e.g. {"mari": 0.9, "vani": 0.1}; {} ends the A/B')
    set_.add_argument("--shadow-variant", default=None, choices=["vani", "uoi", "mari", "none"])
    set_.add_argument("--shadow-sample-rate", type=float, default=None)
    canary = set_.add_mutually_exclusive_group()
    canary.add_argument("--canary", default=None, metavar="VERSION=WEIGHT",
                        help="serve VERSION to WEIGHT of the users (e.g. v8=0.05), the primary version to the rest")
    canary.add_argument("--promote", default=None, metavar="VERSION",
                        help="VERSION becomes the primary and serves every request (ends the canary)")
    canary.add_argument("--rollback", action="store_true", help="end the canary: the primary serves every request")
    set_.add_argument("--compare-sample-rate", type=float, default=None,
                      help="share of requests also scored on the other version to compare rankings")
    set_.add_argument("--compare-top-k", type=int, default=None, help="top-k of the comparison (default 10)")
    set_.add_argument("--compare-min-overlap", default=None, metavar="SHARE",
                      help="count a disagreement below this top-k overlap share; 'none': never")
    show.set_defaults(func=cmd_config_show)
    set_.set_defaults(func=cmd_config_set)

    example = sub.add_parser("example-request", help="print a valid request body for a model's schema")
    example.add_argument("--model", default=None, help="artifact path (default: the configured model)")
    example.add_argument("--n", type=int, default=100)
    example.add_argument("--columnar", action="store_true")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=cmd_example_request)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""The ``mach-tf`` subcommands: each parses nothing itself, builds what the library
function takes from the parsed arguments, calls it, and returns its JSON-able result.

The library is imported inside each command, so that ``mach-tf --help`` and argument
errors answer without loading TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys

from mach_tf.cli.parser import UsageError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_convert(a) -> dict:
    from tfrecords_tools.convert import convert

    if a.format == "dense" and a.labels is None:
        raise UsageError("mach-tf convert: --format dense needs --labels LABELS (one line of "
                         "comma-separated label ids per row of INPUT)")
    if a.format != "dense" and a.labels is not None:
        raise UsageError(f"mach-tf convert: --labels applies to --format dense only (--format "
                         f"{a.format} reads the labels from INPUT)")
    m = convert(a.input, a.prefix, a.format, a.shards, a.compression, a.num_features,
                a.num_labels, a.on_error, progress=True if a.progress else None, log=_log,
                labels_path=a.labels)
    out = {"prefix": a.prefix, "num_examples": m.num_examples,
           "num_features": m.num_features, "num_labels": m.num_labels,
           "shards": len(m.shards), "lines_read": m.lines_read, "skipped": len(m.skipped)}
    if m.embedding_dim is not None:
        out["embedding_dim"] = m.embedding_dim
    if a.verify:
        from tfrecords_tools.verification import verify

        out["verified"] = verify(a.prefix).ok
    return out


def cmd_verify(a) -> dict:
    from tfrecords_tools.verification import verify

    report = verify(a.prefix)
    _log(f"{a.prefix}: {report.num_examples} records in {len(report.shards)} shards verified")
    return report.to_dict()


def cmd_synth(a) -> dict:
    from mach_tf.datasets.synthetic import SyntheticSpec, write_split

    if a.text:
        from mach_tf.datasets.synthetic_text import text_spec, write_text_split

        spec = text_spec(a.num_labels, avg_labels=a.avg_labels, seed=a.seed)
        train, test = write_text_split(a.directory, spec, a.num_train, a.num_test)
    else:
        spec = SyntheticSpec(num_labels=a.num_labels, num_features=a.num_features,
                             avg_labels=a.avg_labels, seed=a.seed)
        train, test = write_split(a.directory, spec, a.num_train, a.num_test)
    out = {"train": train, "test": test}
    if a.convert:
        from tfrecords_tools.convert import convert

        for name, path in (("train", train), ("test", test)):
            convert(path, os.path.join(a.directory, name), "text" if a.text else "xmc")
            out[f"{name}_prefix"] = os.path.join(a.directory, name)
    return out


_HPARAMS = {"buckets": "num_buckets", "repetitions": "num_repetitions",
            "hidden": "hidden_units", "epochs": "epochs", "batch_size": "batch_size",
            "learning_rate": "learning_rate", "dropout": "dropout", "loss": "loss",
            "merge": "merge", "feature_norm": "feature_norm", "group_size": "group_size",
            "seed": "seed", "feature_weighting": "feature_weighting",
            "lr_schedule": "lr_schedule", "early_stopping_patience": "early_stopping_patience",
            "early_stopping_metric": "early_stopping_metric",
            "validation_fraction": "validation_fraction", "precision": "precision",
            "shared_input_layer": "shared_input_layer",
            "output_bias_init": "output_bias_init"}


def _train_config(a):
    """The config asked for, or ``None`` to use the run's existing one."""
    from mach_tf import rundir
    from mach_tf.config import TEXT_OVERRIDES, MachConfig
    from mach_tf.data import config_for_data

    overrides = {field: getattr(a, arg) for arg, field in _HPARAMS.items()
                 if getattr(a, arg) is not None}
    if overrides.get("hidden_units") == [0]:
        overrides["hidden_units"] = []  # --hidden 0: a linear model
    text = {k: getattr(a, k) for k in TEXT_OVERRIDES if getattr(a, k) is not None}
    encoder = {k: v for k, v in (("encoder_file", a.encoder_file),
                                 ("encoder_function", a.encoder),
                                 ("freeze_encoder", a.freeze_encoder or None)) if v is not None}
    if a.config and text:
        raise UsageError("mach-tf train: --text-features/--word-ngrams/--char-ngrams cannot "
                         "change a --config; edit its num_features and text settings instead")
    if a.config and encoder:
        raise UsageError("mach-tf train: --encoder-file/--encoder/--freeze-encoder cannot "
                         "change a --config; its encoder section says which encoder")
    if a.config:
        try:  # JSON only: a config never carries code
            with open(a.config, encoding="utf-8") as f:
                base = MachConfig.from_json(f.read())
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{a.config}: not a readable mach-tf config (JSON): {e}") from None
        return base.replace(**overrides) if overrides else base
    if not overrides and not text and not encoder and rundir.is_run_dir(a.model_dir):
        return None
    return config_for_data(a.train, **overrides, **text, **encoder)


def _fit_verbosity(a) -> int:
    """Keras' own epoch lines only with ``--verbose``: the project prints its own progress."""
    if getattr(a, "verbose_fit", None) is not None:
        return a.verbose_fit
    return 2 if a.verbose else 0


def cmd_train(a) -> dict:
    from mach_tf import rundir
    from mach_tf.launch.local import train
    from mach_tf.launch.report import summarize_if_complete
    from mach_tf.launch.worker import train_worker
    from mach_tf.training.pipeline import configure_threads

    if a.launcher == "ray":
        return _train_ray(a)
    if a.ray_address:
        raise UsageError("mach-tf train: --ray-address needs --launcher ray")
    if a.workers > 1 and (a.worker_index is not None or a.num_workers is not None):
        raise UsageError("mach-tf train: use either --workers N (local processes) or "
                         "--worker-index/--num-workers (one worker of N), not both")
    configure_threads(a.threads)
    config = _train_config(a)
    extra = {"checkpoint_every": a.checkpoint_every, "claim_lease": a.claim_lease}
    scheduled = a.worker_index is not None or a.num_workers is not None or any(
        os.environ.get(v) for v in ("TF_CONFIG", "CLUSTER_SPEC", "JOB_COMPLETION_INDEX",
                                    "SLURM_ARRAY_TASK_ID"))
    verbose = _fit_verbosity(a)
    if scheduled:
        if not a.report_json:  # no launcher prints this worker's epochs: it does
            from mach_tf.launch.identity import worker_identity
            from mach_tf.launch.progress import epoch_events

            extra["events"] = epoch_events(_log, worker_identity(a.worker_index,
                                                                 a.num_workers)[1])
        report = train_worker(a.model_dir, a.train, a.valid, config, a.worker_index,
                              a.num_workers, verbose=verbose, log=_log, **extra)
        if report.failed:
            if a.report_json:
                print(json.dumps(report.to_dict()))
            raise RuntimeError(f"repetitions {sorted(report.failed)} failed: "
                               f"{next(iter(report.failed.values()))}")
        out = report.to_dict()
        if not a.report_json:  # a launcher's own workers leave the final summary to it
            written = summarize_if_complete(
                a.model_dir, config or rundir.load_config(a.model_dir), report.worker_index,
                _log)
            if written and written["final"]:
                out["final_validation"] = {k: round(v, 4) for k, v in
                                           written["final"].items()}
    else:
        out = train(a.model_dir, a.train, a.valid, config, workers=a.workers,
                    threads=a.threads, verbose=verbose, log=_log, **extra)
        _log(f"trained {out['trained']}, skipped {out['skipped']}, failed "
             f"{sorted(out['failed'])}: {out['complete']}/{out['repetitions']} complete")
        if out["failed"]:
            print(json.dumps(out))
            raise RuntimeError(f"repetitions {sorted(out['failed'])} failed: "
                               f"{next(iter(out['failed'].values()))}")
    if not a.report_json:  # the launcher's own workers leave this line to the launcher
        _log(f"TensorBoard: tensorboard --logdir {rundir.logs_dir(a.model_dir)}")
    return out


def _train_ray(a) -> dict:
    from mach_tf import rundir
    from mach_tf.launch.ray_launcher import train_ray

    if a.worker_index is not None or a.workers > 1:
        raise UsageError("mach-tf train: with --launcher ray give --num-workers N (Ray tasks), "
                         "not --workers or --worker-index")
    out = train_ray(a.model_dir, a.train, a.valid, _train_config(a),
                    num_workers=a.num_workers or 1, address=a.ray_address, threads=a.threads,
                    max_retries=a.max_retries, checkpoint_every=a.checkpoint_every,
                    claim_lease=a.claim_lease, log=_log)
    _log(f"trained {out['trained']}, skipped {out['skipped']}, failed "
         f"{sorted(out['failed'])}: {out['complete']}/{out['repetitions']} complete "
         f"(worker attempts {out['attempts']})")
    if out["failed"]:
        print(json.dumps(out))
        raise RuntimeError(f"repetitions {sorted(out['failed'])} failed: "
                           f"{next(iter(out['failed'].values()))}")
    _log(f"TensorBoard: tensorboard --logdir {rundir.logs_dir(a.model_dir)}")
    return out


def cmd_extend(a) -> dict:
    from mach_tf.launch.extension import extend

    return extend(a.model_dir, a.output_run, a.num_classes, a.train, a.replay, a.replay_ratio,
                  a.valid, a.epochs, a.learning_rate, a.workers, a.threads,
                  verbose=2 if a.verbose else 0, log=_log, seed=a.seed,
                  checkpoint_every=a.checkpoint_every, class_text=a.class_text,
                  early_stopping_patience=a.early_stopping_patience)


def cmd_export(a) -> dict:
    from export.stitch import export_model

    res = export_model(a.model_dir, a.output, a.model_version, a.top_k, a.label_names,
                       a.decoder, a.candidate_buckets, verify=not a.no_verify, log=_log,
                       exclude_classes=a.exclude_classes,
                       popularity_penalty=a.popularity_penalty)
    return res.to_dict()


def cmd_evaluate(a) -> dict:
    from mach_tf.inference.evaluation import evaluate

    res = evaluate(a.model, a.test, a.k, a.decoder, a.candidate_buckets, a.batch_size,
                   a.repetitions, exclude_classes=a.exclude_classes,
                   popularity_penalty=a.popularity_penalty)
    if not a.json:
        for k, v in res.items():
            print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")
    return res


def cmd_predict(a) -> dict:
    from mach_tf.inference.predict import predict_lines, predict_text_lines

    if a.text:  # bytes: a line that is not UTF-8 is named, not a decoding traceback
        n = predict_text_lines(a.model, sys.stdin.buffer, sys.stdout, top_k=a.top_k,
                               batch_size=a.batch_size, exclude_classes=a.exclude_classes)
    else:
        n = predict_lines(a.model, sys.stdin, sys.stdout, top_k=a.top_k,
                          batch_size=a.batch_size, log=_log,
                          exclude_classes=a.exclude_classes)
    return {"queries": n}


def cmd_tune(a) -> dict:
    from mach_tf.config import MachConfig
    from mach_tf.training.pipeline import configure_threads
    try:
        from mach_tf.training.tuning import tune
    except ModuleNotFoundError as e:
        if e.name != "keras_tuner":
            raise
        raise RuntimeError("mach-tf tune needs keras-tuner: pip install 'mach-tf[tune]'") \
            from None

    configure_threads(a.threads)
    space = None
    if a.space:
        try:
            space = json.loads(a.space)
        except ValueError as e:
            raise UsageError(f"mach-tf tune: --space is not JSON: {e}")
        if not isinstance(space, dict) or not all(
                isinstance(v, list) and v for v in space.values()):
            raise UsageError("mach-tf tune: --space must map levers to non-empty lists")
    base = None
    if a.config:
        with open(a.config) as f:
            base = MachConfig.from_json(f.read())
    return tune(a.train, a.output, a.valid, base, a.tuner, a.max_trials, a.max_epochs, space,
                a.seed, a.overwrite, log=_log, verbose=2 if a.verbose else 0)


def cmd_demo(a) -> dict:
    from mach_tf.cli.demo import run_demo

    return run_demo(a.workdir, small=a.small, text=a.text, log=_log)


COMMANDS = {"convert": cmd_convert, "verify": cmd_verify, "synth": cmd_synth, "train": cmd_train,
            "extend": cmd_extend, "export": cmd_export, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "tune": cmd_tune, "demo": cmd_demo}

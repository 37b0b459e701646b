"""The ``mach-tf`` argument parser: every subcommand, its flags and examples."""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap

from mach_tf.version import __version__
from tfrecords_tools.paths import expand_path

EXAMPLES = {
    "convert": """
        examples:
          mach-tf convert data/train.txt data/tfr/train --shards 4
          mach-tf convert data/train.svm data/tfr/train --format libsvm --compression GZIP
          mach-tf convert dirty.txt data/tfr/dirty --on-error skip   # skipped lines listed
          mach-tf convert data/train.txt data/tfr/train --verify     # read back every record
          mach-tf convert queries.tsv data/tfr/queries --format text  # lines 'labels<TAB>text'
          mach-tf convert emb.npy data/tfr/emb --format dense --labels labels.txt  # [N, d] floats
    """,
    "verify": """
        examples:
          mach-tf verify data/tfr/train          # every shard read back and checked
          mach-tf verify data/tfr/train --json
    """,
    "synth": """
        examples:
          mach-tf synth data/synth --num-labels 5000 --train 50000 --test 5000
          mach-tf synth data/synth --convert    # also writes data/synth/{train,test} TFRecords
          mach-tf synth data/text --text --convert   # labelled queries 'labels<TAB>text'
    """,
    "train": """
        examples:
          mach-tf train --train data/tfr/train --model-dir runs/r1
          mach-tf train --train data/tfr/train --valid data/tfr/valid --model-dir runs/r1 \\
              --buckets 1024 --repetitions 16 --hidden 512 --epochs 10 --workers 2
          # one worker of a scheduler array (index also read from TF_CONFIG,
          # JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID):
          mach-tf train --train data/tfr/train --model-dir runs/r1 --worker-index 3 --num-workers 8
          # 8 Ray tasks on a running cluster (without --ray-address: a local Ray runtime)
          mach-tf train --train /shared/tfr/train --model-dir /shared/runs/r1 \\
              --launcher ray --ray-address auto --num-workers 8
          # text data (convert --format text): featurised in the pipeline and in the export
          mach-tf train --train data/text/train --model-dir runs/t1 --char-ngrams 3
    """,
    "extend": """
        examples:
          # add classes 5000..5199: fine-tune runs/r1's repetitions on their examples mixed
          # with as many replayed old ones (runs/r1 is left as it was)
          mach-tf extend --model-dir runs/r1 --num-classes 5200 --train data/tfr/new \\
              --output-run runs/r2
          mach-tf extend --model-dir runs/r1 --num-classes 5200 --train data/tfr/new \\
              --replay data/tfr/train --replay-ratio 2 --output-run runs/r2 --workers 2
          mach-tf export --model-dir runs/r2 --output serving/mach   # the next version
          # a text run: new products known only by their titles so far
          mach-tf extend --model-dir runs/t1 --num-classes 5200 --class-text titles.tsv \\
              --output-run runs/t2
    """,
    "export": """
        examples:
          mach-tf export --model-dir runs/r1 --output serving/mach
          mach-tf export --model-dir runs/r1 --output serving/mach --top-k 20 \\
              --label-names labels.txt --decoder candidates --candidate-buckets 16
          # retired classes (one id per line) are never returned by any signature
          mach-tf export --model-dir runs/r1 --output serving/mach --exclude-classes sold_out.txt
    """,
    "evaluate": """
        examples:
          mach-tf evaluate --model runs/r1 --test data/tfr/test --json
          mach-tf evaluate --model serving/mach --test data/tfr/test --k 1,3,5,10
          # what the first 4 repetitions of a run give, merged alone
          mach-tf evaluate --model runs/r1 --test data/tfr/test --repetitions 4
    """,
    "predict": """
        examples:
          echo "0:1 17:0.5 42:2" | mach-tf predict --model serving/mach --top-k 5
          tail -n +2 test.txt | mach-tf predict --model serving/mach/3 > predictions.jsonl
          echo "red running shoes" | mach-tf predict --model serving/text --text
    """,
    "tune": """
        examples:
          mach-tf tune --train data/tfr/train --output tuning/r1 --max-trials 12
          mach-tf tune --train data/tfr/train --valid data/tfr/valid --output tuning/r2 \\
              --tuner hyperband --max-epochs 27
          mach-tf train --train data/tfr/train --model-dir runs/r1 --config tuning/r1/config.json
          tensorboard --logdir tuning/r1/logs      # HParams dashboard of the trials
    """,
    "demo": """
        examples:
          mach-tf demo --json
          mach-tf demo --workdir /tmp/mach-demo
    """,
}


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def _sub(subparsers, name: str, help_: str, parents=()) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help_, description=help_, parents=list(parents), allow_abbrev=False,
        epilog=textwrap.dedent(EXAMPLES.get(name, "")),
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"cut-offs must be >= 1, got {text!r}")
    return ks


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, naming the subcommand and the flag meant when an argument
    is not recognised (flags are never matched by prefix: ``--bucket`` is not ``--buckets``).

    Raises:
        UsageError: for any argument error.
    """
    a, extras = parser.parse_known_args(argv)
    if extras:
        target = parser.subcommands.get(getattr(a, "command", None)) or parser
        known = [o for action in target._actions for o in action.option_strings]
        hints = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
            if close:
                hints.append(f"{close[0]} for {flag}")
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        target.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return a


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mach-tf", allow_abbrev=False,
                description="MACH extreme classification for TensorFlow/Keras.")
    p.add_argument("--version", action="version", version=f"mach-tf {__version__}")
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--json", action="store_true",
                        help="print one JSON object as the last stdout line")
    common.add_argument("--verbose", action="store_true",
                        help="show full tracebacks on failure (train, tune: also Keras' "
                             "own epoch lines)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p.subcommands = sub.choices  # name -> parser, for parse_args' messages

    c = _sub(sub, "convert", "Convert XMC, libsvm or labelled text, or dense vectors, into "
                             "sharded TFRecords.", [common])
    c.add_argument("input", type=expand_path,
                   help="text file (plain or gzip); for --format dense a .npy float matrix")
    c.add_argument("prefix", type=expand_path,
                   help="output prefix: PREFIX-0000i-of-0000N.tfrecord + PREFIX.manifest.json")
    c.add_argument("--format", choices=("xmc", "libsvm", "text", "dense"), default="xmc",
                   help="xmc (header line), libsvm, text (lines 'labels<TAB>text'), or dense "
                        "(INPUT a [N, d] .npy matrix, labels from --labels)")
    c.add_argument("--labels", type=expand_path, metavar="LABELS",
                   help="--format dense: label file, one line of comma-separated label ids "
                        "per row (an empty line: no labels)")
    c.add_argument("--shards", type=int, default=1)
    c.add_argument("--compression", choices=("NONE", "GZIP"), default="NONE",
                   type=str.upper)
    c.add_argument("--num-features", type=int, help="feature dimension (libsvm)")
    c.add_argument("--num-labels", type=int, help="label dimension (libsvm, text, dense)")
    c.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="fail on the first bad line, or skip and list bad lines")
    c.add_argument("--progress", action="store_true", help="force the progress line")
    c.add_argument("--verify", action="store_true",
                   help="read every written record back and check it (see 'mach-tf verify')")

    y = _sub(sub, "verify", "Read a converted dataset back in full and check it against its "
                            "manifest (CRCs, schema, ids, counts).", [common])
    y.add_argument("prefix", type=expand_path, help="dataset prefix (PREFIX.manifest.json)")

    s = _sub(sub, "synth", "Write synthetic XMC data (power-law labels, prototype "
                           "features).", [common])
    s.add_argument("directory", type=expand_path,
                   help="writes DIRECTORY/train.txt and DIRECTORY/test.txt")
    s.add_argument("--num-labels", type=int, default=1000)
    s.add_argument("--num-features", type=int, default=5000)
    s.add_argument("--train", type=int, default=20000, dest="num_train")
    s.add_argument("--test", type=int, default=2000, dest="num_test")
    s.add_argument("--avg-labels", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--convert", action="store_true",
                   help="also convert to DIRECTORY/train and DIRECTORY/test TFRecords")
    s.add_argument("--text", action="store_true",
                   help="write labelled queries 'labels<TAB>text' (the text format)")

    t = _sub(sub, "train", "Train the MACH repetitions (this worker's share, or all with "
                           "--workers).", [common])
    t.add_argument("--train", required=True, type=expand_path, help="training data prefix")
    t.add_argument("--valid", type=expand_path, help="validation data prefix")
    t.add_argument("--model-dir", required=True, type=expand_path, help="the run directory")
    t.add_argument("--config", type=expand_path,
                   help="a config.json to start from (e.g. from 'mach-tf tune')")
    t.add_argument("--buckets", type=int, help="B (default: from K)")
    t.add_argument("--repetitions", type=int, help="R (default: from K)")
    t.add_argument("--hidden", type=int, nargs="+",
                   help="hidden layer widths; 0 alone for a linear model (no hidden layer)")
    t.add_argument("--precision", choices=("float32", "mixed_bfloat16"),
                   help="mixed_bfloat16: training's matmuls in bfloat16 (fast on CPUs with "
                        "AMX or AVX-512 BF16); weights and exports stay float32")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--dropout", type=float)
    t.add_argument("--loss", choices=("softmax", "sigmoid"))
    t.add_argument("--merge", choices=("prob", "logprob"))
    t.add_argument("--feature-norm", choices=("l2", "none"))
    t.add_argument("--feature-weighting", choices=("none", "idf"),
                   help="idf: tf-idf weights learned from the training data")
    t.add_argument("--output-bias-init", choices=("log_prior", "zeros"),
                   help="where the output bias starts; log_prior: each bucket's log share "
                        "of the training labels (default below 5 examples per class)")
    t.add_argument("--lr-schedule", choices=("constant", "plateau", "cosine"))
    t.add_argument("--early-stopping-patience", type=int,
                   help="epochs without merged validation improvement (0: off)")
    t.add_argument("--early-stopping-metric",
                   choices=("p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5"))
    t.add_argument("--validation-fraction", type=float,
                   help="share of --train held out when no --valid is given (0: none)")
    t.add_argument("--group-size", type=int, help="repetitions per Keras model per worker")
    t.add_argument("--shared-input-layer", action="store_true", default=None,
                   help="a group's repetitions share one sparse input layer: faster "
                        "training, lower precision where classes have few examples")
    t.add_argument("--seed", type=int)
    t.add_argument("--text-features", type=int,
                   help="text data: D, the featuriser's hash space (default 65536)")
    t.add_argument("--word-ngrams", type=int, help="text data: word n-grams 1..N (default 2)")
    t.add_argument("--char-ngrams", type=int,
                   help="text data: character n-gram width inside words, 0 = off (default 0)")
    t.add_argument("--encoder-file", type=expand_path, metavar="FILE.keras",
                   help="dense data: start every repetition from this saved Keras encoder "
                        "(copied into the run directory)")
    t.add_argument("--freeze-encoder", action="store_true",
                   help="with --encoder-file: keep its weights, shared by a group's "
                        "repetitions (default: each repetition fine-tunes its own copy)")
    t.add_argument("--encoder", metavar="MODULE:FUNCTION",
                   help="dense data: FUNCTION(input_dim=d, seed=s) returns a fresh Keras "
                        "encoder per repetition (MODULE importable by every worker)")
    t.add_argument("--worker-index", type=int, help="this worker's index (scheduler mode)")
    t.add_argument("--num-workers", type=int, help="number of workers (scheduler mode)")
    t.add_argument("--workers", type=int, default=1,
                   help="start this many local worker processes")
    t.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="local: --workers processes on this machine; ray: --num-workers "
                        "Ray tasks")
    t.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else "
                                         "start a local Ray runtime)")
    t.add_argument("--max-retries", type=int, default=3,
                   help="Ray: times a worker task is retried after its process dies")
    t.add_argument("--threads", type=int, help="TensorFlow threads per worker")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (default: every 5 minutes; a "
                        "killed worker resumes from its last checkpoint)")
    t.add_argument("--claim-lease", type=float, metavar="SECONDS",
                   help="a worker's claim on a repetition expires after this long without "
                        "a heartbeat (default 120)")
    t.add_argument("--report-json", action="store_true", help=argparse.SUPPRESS)
    # Keras' fit verbosity (default: 2 with --verbose, else 0); local workers get it.
    t.add_argument("--verbose-fit", type=int, help=argparse.SUPPRESS)

    x = _sub(sub, "extend", "Add classes to a trained run: a new run whose repetitions are "
                            "fine-tuned from it on the new classes' examples and replayed "
                            "old ones.", [common])
    x.add_argument("--model-dir", required=True, type=expand_path,
                   help="the trained run (only read)")
    x.add_argument("--num-classes", required=True, type=int, help="K2, above the run's K")
    x.add_argument("--train", type=expand_path,
                   help="prefix of the new examples (labels below K2)")
    x.add_argument("--class-text", type=expand_path, metavar="FILE",
                   help="text runs: 'id<TAB>title' lines introducing classes by their names "
                        "(with or without --train)")
    x.add_argument("--output-run", required=True, type=expand_path,
                   help="the new run directory (a rerun resumes it)")
    x.add_argument("--replay", type=expand_path,
                   help="old training data to replay (default: the run's recorded --train)")
    x.add_argument("--replay-ratio", type=float, default=1.0,
                   help="replayed old examples per new example (default 1)")
    x.add_argument("--valid", type=expand_path, help="validation data prefix")
    x.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the run's)")
    x.add_argument("--learning-rate", type=float,
                   help="the fine-tuning's (default: 4 times the run's)")
    x.add_argument("--early-stopping-patience", type=int,
                   help="epochs without merged validation improvement (0: off; default: "
                        "the run's)")
    x.add_argument("--workers", type=int, default=1)
    x.add_argument("--threads", type=int, help="TensorFlow threads per worker")
    x.add_argument("--seed", type=int, default=0, help="seeds the replay sample")
    x.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (as train)")

    e = _sub(sub, "export", "Stitch a run into one SavedModel for TensorFlow Serving.", [common])
    e.add_argument("--model-dir", required=True, type=expand_path)
    e.add_argument("--output", required=True, type=expand_path,
                   help="BASE/NAME; writes BASE/NAME/VERSION")
    e.add_argument("--version", type=int, dest="model_version")
    e.add_argument("--top-k", type=int, default=10)
    e.add_argument("--label-names", type=expand_path, help="file with one label name per line")
    e.add_argument("--decoder", choices=("auto", "exact", "candidates"), default="auto")
    e.add_argument("--candidate-buckets", type=int, default=10, help="m (candidates decoder)")
    e.add_argument("--no-verify", action="store_true",
                   help="skip loading the export back and checking it")
    e.add_argument("--exclude-classes", type=expand_path, metavar="FILE",
                   help="class ids never returned (retired), one per line; every answer "
                        "still has --top-k classes")
    e.add_argument("--popularity-penalty", type=float, metavar="P",
                   help="serve with this popularity penalty instead of the run's (no "
                        "retraining; docs/defaults.md)")

    v = _sub(sub, "evaluate", "P@k and nDCG@k of a run or an export on test data.", [common])
    v.add_argument("--model", required=True, type=expand_path, help="run directory or export")
    v.add_argument("--test", required=True, type=expand_path, help="test data prefix")
    v.add_argument("--k", type=_ks, default=[1, 3, 5], help="cut-offs, e.g. 1,3,5")
    v.add_argument("--decoder", choices=("auto", "exact", "candidates"), default="auto")
    v.add_argument("--candidate-buckets", type=int, default=10)
    v.add_argument("--batch-size", type=int)
    v.add_argument("--repetitions", type=int,
                   help="run directories: merge only the first N repetitions (default all)")
    v.add_argument("--exclude-classes", type=expand_path, metavar="FILE",
                   help="class ids never predicted, one per line (as export serves them)")
    v.add_argument("--popularity-penalty", type=float, metavar="P",
                   help="run directories: score with this popularity penalty instead of "
                        "the run's (no retraining)")

    r = _sub(sub, "predict", "Query an export: one query per line on stdin (XMC features "
                             "'id:value ...', a dense export's d numbers separated by spaces "
                             "or commas, or raw text with --text), one JSON line out per "
                             "input line, in order; an empty line is an empty query (refused "
                             "by a dense export).", [common])
    r.add_argument("--model", required=True, type=expand_path,
                   help="export (BASE/NAME or BASE/NAME/VERSION)")
    r.add_argument("--top-k", type=int, help="return at most this many (<= the export's)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--text", action="store_true",
                   help="stdin holds raw queries, one per line (a text model's predict_text)")
    r.add_argument("--exclude-classes", type=expand_path, metavar="FILE",
                   help="class ids never answered, one per line (the filtered signature)")

    u = _sub(sub, "tune", "Search the levers with keras-tuner, objective merged validation "
                          "P@1; writes the best config for 'mach-tf train --config'.", [common])
    u.add_argument("--train", required=True, type=expand_path, help="training data prefix")
    u.add_argument("--valid", type=expand_path,
                   help="validation data prefix (default: carved from --train)")
    u.add_argument("--output", required=True, type=expand_path,
                   help="writes OUTPUT/config.json, trials.json, tuner/ and logs/")
    u.add_argument("--config", type=expand_path,
                   help="a config.json to search around (default: the defaults for the data)")
    u.add_argument("--tuner", choices=("bayesian", "hyperband", "random"), default="bayesian")
    u.add_argument("--max-trials", type=int, default=10)
    u.add_argument("--max-epochs", type=int, help="epoch cap of each trial")
    u.add_argument("--space", help="JSON {lever: [values]} replacing the default search space")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    u.add_argument("--threads", type=int, help="TensorFlow threads")

    d = _sub(sub, "demo", "The whole pipeline end to end on built-in synthetic data.", [common])
    d.add_argument("--workdir", default="demo-output", type=expand_path)
    d.add_argument("--small", action="store_true", help="a smaller, faster demo")
    d.add_argument("--text", action="store_true",
                   help="the text pipeline: synthetic labelled queries, predict_text")
    return p

"""Command-line plumbing shared by ``tools/train_net.py`` and ``tools/test_net.py``:
their common arguments, the config they build from them, where they write and
what they print when they start."""
import argparse
import os
import sys

from atss_core.config import ConfigError
from atss_core.config import cfg as default_cfg
from atss_core.config import validate_config
from atss_core.utils.comm import environment_summary, is_main_process
from atss_core.utils.io import atomic_write_text

# Where a tool writes when OUTPUT_DIR is not given: a folder per config under it.
TRAINING_ROOT = "training_dir"

ENVIRONMENT_HELP = """\
environment variables:
  ATSS_DATA_DIR      folder that holds the datasets (coco/, coco128/, shapes/, ...);
                     default: datasets/ in the current directory
  ATSS_DATASETS      JSON file registering more datasets (see docs/DATA.md)
  ATSS_WEIGHTS_DIR   folder of the ImageNet backbone weights that catalog:// names
                     (see INSTALL.md)
  OMP_WAIT_POLICY    PASSIVE is recommended on a shared CPU machine
"""


def default_argument_parser(description, examples, output_help):
    """Parser with ``--config-file`` (required), ``--local_rank`` /
    ``--local-rank`` and the trailing config ``KEY VALUE`` pairs (``opts``);
    tools add their own options. ``examples`` (command lines) and ``output_help``
    (where the tool writes) go to the end of ``--help``, with the environment
    variables the tools read."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n{examples}\noutput:\n{output_help}\n{ENVIRONMENT_HELP}",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="YAML config, e.g. configs/atss/atss_R_50_FPN_1x.yaml")
    # torch.distributed.launch passes --local_rank (older) or --local-rank;
    # torchrun sets $LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)), metavar="N",
                        help="process index on this machine, set by torch.distributed.launch "
                             "(torchrun sets $LOCAL_RANK instead); do not pass it yourself")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config options to override, e.g. MODEL.DEVICE cpu (default: cuda) "
                             "SOLVER.IMS_PER_BATCH 8 OUTPUT_DIR training_dir/run1; a mistyped key "
                             "stops with the closest existing ones")
    return parser


def parse_args(parser, argv=None):
    """``parser.parse_args(argv)``, refusing ``--options`` given after the config
    pairs (argparse would take them as config keys)."""
    args = parser.parse_args(argv)
    flags = [opt for opt in args.opts or [] if opt.startswith("--")]
    if flags:
        parser.error(f"{' '.join(flags)}: put the --options before the config KEY VALUE pairs")
    return args


def config_from_args(args):
    """The default config merged with ``args.config_file`` and ``args.opts``, and
    validated; not frozen, so the tool can check its own requirements first.
    ``OUTPUT_DIR`` is left as given (empty when not set: see
    :func:`default_output_dir`)."""
    if not os.path.isfile(args.config_file):
        raise ConfigError(f"--config-file {args.config_file}: no such file "
                          "(the configs are in configs/atss/)")
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    validate_config(cfg)
    return cfg


def config_name(config_file):
    """``configs/atss/atss_R_50_FPN_1x.yaml`` -> ``atss_R_50_FPN_1x``."""
    return os.path.splitext(os.path.basename(config_file))[0]


def default_output_dir(config_file, weights=None):
    """Where a tool writes when ``OUTPUT_DIR`` is empty: training (and
    evaluation of its last checkpoint) in ``training_dir/<config name>``; the
    evaluation of given weights in ``training_dir/<config name>/eval_<weights
    name>``, so that evaluating two checkpoints keeps both results. Relative to
    the current directory."""
    folder = os.path.join(TRAINING_ROOT, config_name(config_file))
    if weights:
        stem = os.path.splitext(os.path.basename(weights.rstrip("/")))[0] or "weights"
        folder = os.path.join(folder, f"eval_{stem}")
    return folder


def start_run(cfg, args, device, logger, config_filename):
    """What every tool does once its logger is set up: the command line, the
    environment and the full config to the log file (and ``config_filename`` in
    ``OUTPUT_DIR`` when given, on the main process), and a short summary to the
    console."""
    logger.debug("Command line arguments: %s", args)
    if args.config_file:
        with open(args.config_file) as f:
            logger.debug("Config file %s:\n%s", args.config_file, f.read())
    logger.debug("Running with config:\n%s", cfg.dump())
    overrides = " ".join(str(o) for o in args.opts or []) or "none"
    logger.info("Config %s, overrides: %s", args.config_file, overrides)
    logger.info("Environment: %s", "; ".join(environment_summary(device).splitlines()))
    if cfg.OUTPUT_DIR and config_filename and is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, config_filename)
        atomic_write_text(cfg.dump(), path)
        logger.info("Output folder %s (full config in %s)", cfg.OUTPUT_DIR, config_filename)



def run_tool(main, tool_name, errors, argv=None):
    """``main(argv)`` as a command: returns the exit status, 0, or 2 after one
    ``<tool_name>: error: ...`` line on stderr for an error of this framework
    (``errors``, a tuple of exception types); any other exception propagates
    with its traceback."""
    try:
        main(argv)
    except errors as e:
        print(f"{tool_name}: error: {e}", file=sys.stderr)
        return 2
    return 0

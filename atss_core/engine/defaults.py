"""Command-line plumbing shared by ``tools/train_net.py`` and ``tools/test_net.py``:
their common arguments and the config they build from them."""
import argparse
import os

from atss_core.config import cfg as default_cfg
from atss_core.config import validate_config


def default_argument_parser(description):
    """Parser with ``--config-file``, ``--local_rank`` / ``--local-rank`` and the
    trailing config ``KEY VALUE`` pairs (``opts``); tools add their own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    # torch.distributed.launch passes --local_rank (older) or --local-rank;
    # torchrun sets $LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config options to override, as KEY VALUE pairs")
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
    validated; not frozen, so the tool can check its own requirements first."""
    cfg = default_cfg.clone()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    validate_config(cfg)
    return cfg

r"""Evaluate a trained ATSS detector on the COCO datasets of ``DATASETS.TEST``.

    # one GPU (or the CPU with MODEL.DEVICE cpu)
    python tools/test_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        MODEL.WEIGHT ATSS_R_50_FPN_1x.pth TEST.IMS_PER_BATCH 4
    # 8 GPUs (TEST.IMS_PER_BATCH is the total over processes)
    python -m torch.distributed.launch --nproc_per_node=8 tools/test_net.py \
        --config-file configs/atss/atss_R_50_FPN_1x.yaml MODEL.WEIGHT ATSS_R_50_FPN_1x.pth
    torchrun --nproc_per_node=8 tools/test_net.py --config-file ... (same options)
    # multi-scale testing (test-time augmentation) as configured in TEST.BBOX_AUG
    python tools/test_net.py --config-file ... MODEL.WEIGHT ... TEST.BBOX_AUG.ENABLED True

For each dataset, ``OUTPUT_DIR/inference/<dataset>/`` receives ``bbox.json``
(COCO results) and, for an annotated split, ``metrics.json`` (AP, AP50, ...,
timing, per-class AP with ``--per-class-ap``); the log goes to the console and
``OUTPUT_DIR/test_log.txt``. The weights are ``MODEL.WEIGHT``;
``--use-last-checkpoint`` loads the checkpoint named by
``OUTPUT_DIR/last_checkpoint`` instead (the last one of a training run).
Without ``OUTPUT_DIR``: ``training_dir/<config name>`` with
``--use-last-checkpoint``, else ``training_dir/<config name>/eval_<weights
name>``. ``--help`` has examples. See docs/EVALUATION.md.

Weights holding NaN or infinite values (a diverged training) are refused
rather than evaluated to AP 0. Errors of the configuration, data, weights or
evaluation end with one ``test_net.py: error: ...`` line and exit status 2.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import ConfigError  # noqa: E402
from atss_core.config.paths_catalog import DatasetNotFoundError  # noqa: E402
from atss_core.engine import defaults  # noqa: E402
from atss_core.engine.coco_eval import EvaluationError  # noqa: E402
from atss_core.engine.defaults import (  # noqa: E402
    config_from_args,
    default_argument_parser,
    default_output_dir,
    run_tool,
    start_run,
)
from atss_core.engine.inference import inference_on_datasets  # noqa: E402
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.utils.checkpoint import (  # noqa: E402
    CheckpointError,
    DetectronCheckpointer,
    resolve_weight_path,
)
from atss_core.utils.comm import get_rank, init_process, is_main_process  # noqa: E402
from atss_core.utils.io import DiskFullError  # noqa: E402
from atss_core.utils.logger import setup_logger  # noqa: E402
from atss_core.utils.weights_check import NonFiniteWeightsError, check_finite_state_dict  # noqa: E402

# Errors of this framework that end the tool with one message (exit status 2);
# anything else keeps its traceback.
TOOL_ERRORS = (ConfigError, CheckpointError, EvaluationError, DatasetNotFoundError,
               FileNotFoundError, NonFiniteWeightsError, DiskFullError)


EXAMPLES = """\
  # the last checkpoint of tools/train_net.py on the same config, on the CPU
  ATSS_DATA_DIR=/path/to/data python tools/test_net.py --config-file configs/atss/cpu/atss_R_18_FPN_coco128.yaml \\
      --use-last-checkpoint MODEL.DEVICE cpu
  # a released checkpoint on COCO minival, on a GPU
  python tools/test_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \\
      MODEL.WEIGHT ATSS_R_50_FPN_1x.pth TEST.IMS_PER_BATCH 4
  # multi-scale testing as configured in TEST.BBOX_AUG
  python tools/test_net.py --config-file configs/atss/atss_dcnv2_X_101_64x4d_FPN_2x.yaml \\
      MODEL.WEIGHT ATSS_dcnv2_X_101_64x4d_FPN_2x.pth TEST.BBOX_AUG.ENABLED True
"""
OUTPUT_HELP = """\
  The weights are MODEL.WEIGHT, or with --use-last-checkpoint the checkpoint named by
  OUTPUT_DIR/last_checkpoint; one of the two is required. The datasets are DATASETS.TEST.
  OUTPUT_DIR receives test_log.txt, test_config.yml and inference/<dataset>/ with bbox.json
  (COCO results) and metrics.json. Default OUTPUT_DIR: training_dir/<config name> with
  --use-last-checkpoint (where tools/train_net.py trained), else
  training_dir/<config name>/eval_<weights name>.
"""


def parse_args(argv=None):
    parser = default_argument_parser("Evaluate an ATSS detector on the COCO-format datasets of "
                                     "DATASETS.TEST.", EXAMPLES, OUTPUT_HELP)
    parser.add_argument("--per-class-ap", dest="per_class_ap", action="store_true",
                        help="also report the AP of every category (log and metrics.json)")
    parser.add_argument("--use-last-checkpoint", dest="use_last_checkpoint", action="store_true",
                        help="load OUTPUT_DIR/last_checkpoint instead of MODEL.WEIGHT")
    parser.add_argument("--warmup-iters", dest="warmup_iters", type=int, default=3,
                        help="batches per process left out of the timing (default 3)")
    return defaults.parse_args(parser, argv)


def load_config(args):
    """The default config merged with ``--config-file`` and the trailing
    options, validated and frozen."""
    cfg = config_from_args(args)
    if args.warmup_iters < 0:
        raise ConfigError(f"--warmup-iters must be >= 0, got {args.warmup_iters}")
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: name the datasets to evaluate, e.g. "
                          "DATASETS.TEST \"('coco_2017_val',)\"")
    if not args.use_last_checkpoint and not cfg.MODEL.WEIGHT:
        raise ConfigError("MODEL.WEIGHT is empty: pass the trained weights, e.g. "
                          "MODEL.WEIGHT ATSS_R_50_FPN_1x.pth (or --use-last-checkpoint)")
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(
            args.config_file, weights=None if args.use_last_checkpoint else cfg.MODEL.WEIGHT)
    cfg.freeze()
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    device = init_process(cfg.MODEL.DEVICE, args.local_rank)
    try:
        if is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        logger = setup_logger("atss_core", cfg.OUTPUT_DIR, get_rank(), filename="test_log.txt")
        start_run(cfg, args, device, logger, "test_config.yml")

        model = build_detection_model(cfg)
        model.to(device)
        checkpointer = DetectronCheckpointer(cfg, model, save_dir=cfg.OUTPUT_DIR, save_to_disk=False)
        if args.use_last_checkpoint and not checkpointer.has_checkpoint():
            raise CheckpointError(
                f"--use-last-checkpoint: {os.path.join(cfg.OUTPUT_DIR, 'last_checkpoint')} does "
                "not exist; point OUTPUT_DIR at a training run or pass MODEL.WEIGHT instead"
            )
        if cfg.MODEL.WEIGHT.startswith("catalog://") and not args.use_last_checkpoint:
            logger.warning(
                "MODEL.WEIGHT is %s, ImageNet backbone weights: the detection head is untrained. "
                "Pass the trained detector, e.g. MODEL.WEIGHT ATSS_R_50_FPN_1x.pth",
                cfg.MODEL.WEIGHT,
            )
        weights = (checkpointer.get_checkpoint_file() if args.use_last_checkpoint
                   else resolve_weight_path(cfg.MODEL.WEIGHT))
        checkpointer.load(cfg.MODEL.WEIGHT, use_latest=args.use_last_checkpoint)
        check_finite_state_dict(model.state_dict(), weights)
        output_root = os.path.join(cfg.OUTPUT_DIR, "inference")
        results = inference_on_datasets(cfg, model, device, output_root=output_root,
                                        per_class_ap=args.per_class_ap, warmup_iters=args.warmup_iters)
        logger.info("Done: the results are in %s (bbox.json, metrics.json per dataset), the log in %s",
                    os.path.abspath(output_root), os.path.abspath(os.path.join(cfg.OUTPUT_DIR, "test_log.txt")))
        return results
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def cli(argv=None):
    """:func:`main` as a command (exit status 2 and one line for :data:`TOOL_ERRORS`)."""
    return run_tool(main, "test_net.py", TOOL_ERRORS, argv)


if __name__ == "__main__":
    sys.exit(cli())

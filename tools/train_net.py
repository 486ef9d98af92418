r"""Train an ATSS detector.

    # one GPU (or the CPU with MODEL.DEVICE cpu)
    python tools/train_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        OUTPUT_DIR training_dir/atss_R_50_FPN_1x
    # 8 GPUs
    python -m torch.distributed.launch --nproc_per_node=8 tools/train_net.py \
        --config-file configs/atss/atss_R_50_FPN_1x.yaml DATALOADER.NUM_WORKERS 2 \
        OUTPUT_DIR training_dir/atss_R_50_FPN_1x
    torchrun --nproc_per_node=8 tools/train_net.py --config-file ... (same options)

``SOLVER.IMS_PER_BATCH`` is the batch over all processes. ``OUTPUT_DIR``
defaults to ``training_dir/<config name>``. A run whose
OUTPUT_DIR holds a ``last_checkpoint`` resumes from it (model, optimizer,
scheduler, iteration). After training, the model is evaluated on
``DATASETS.TEST`` unless ``--skip-test``. See docs/TRAINING.md.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atss_core.config import ConfigError  # noqa: E402
from atss_core.config.paths_catalog import DatasetNotFoundError  # noqa: E402
from atss_core.data import make_data_loader  # noqa: E402
from atss_core.engine import defaults  # noqa: E402
from atss_core.engine.defaults import (  # noqa: E402
    config_from_args,
    default_argument_parser,
    default_output_dir,
    start_run,
)
from atss_core.engine.inference import inference_on_datasets  # noqa: E402
from atss_core.engine.trainer import (  # noqa: E402
    NonFiniteLossError,
    do_train,
    make_grad_scaler,
    seed_all_rng,
    validate_training_config,
)
from atss_core.modeling.detector import build_detection_model  # noqa: E402
from atss_core.solver import make_lr_scheduler, make_optimizer  # noqa: E402
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer  # noqa: E402
from atss_core.utils.comm import get_rank, get_world_size, init_process, is_main_process  # noqa: E402
from atss_core.utils.logger import setup_logger  # noqa: E402


EXAMPLES = """\
  # on the CPU, the small COCO-subset config (ATSS_DATA_DIR: the folder that holds coco128/)
  ATSS_DATA_DIR=/path/to/data python tools/train_net.py \\
      --config-file configs/atss/cpu/atss_R_18_FPN_coco128.yaml MODEL.DEVICE cpu
  # 8 GPUs (SOLVER.IMS_PER_BATCH is the total batch)
  torchrun --nproc_per_node=8 tools/train_net.py \\
      --config-file configs/atss/atss_R_50_FPN_1x.yaml OUTPUT_DIR training_dir/r50
"""
OUTPUT_HELP = """\
  OUTPUT_DIR (default: training_dir/<config name>) receives log.txt, config.yml,
  train_metrics.jsonl, the checkpoints (model_<iteration>.pth, model_final.pth,
  last_checkpoint) and, unless --skip-test, inference/<dataset>/ with bbox.json and
  metrics.json. A run whose OUTPUT_DIR holds a last_checkpoint resumes from it.
"""


def parse_args(argv=None):
    parser = default_argument_parser("Train an ATSS detector.", EXAMPLES, OUTPUT_HELP)
    parser.add_argument("--skip-test", dest="skip_test", action="store_true",
                        help="do not evaluate the final model on DATASETS.TEST")
    parser.add_argument("--seed", type=int, default=0,
                        help="base random seed; process r uses seed + r (default 0)")
    return defaults.parse_args(parser, argv)


def load_config(args):
    """The default config merged with ``--config-file`` and the trailing options,
    validated and frozen."""
    cfg = config_from_args(args)
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(args.config_file)
    validate_training_config(cfg)
    cfg.freeze()
    return cfg


def train(cfg, device, seed, skip_test=False):
    """Build everything from ``cfg``, train (resuming from ``OUTPUT_DIR`` when it
    holds a checkpoint) and return the trained model (without the DDP wrapper)."""
    distributed = get_world_size() > 1
    seed_all_rng(seed + get_rank())
    model = build_detection_model(cfg)
    model.to(device)
    if cfg.MODEL.USE_SYNCBN and distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    grad_scaler = make_grad_scaler(cfg.SOLVER.MIXED_PRECISION, device)
    checkpointer = DetectronCheckpointer(
        cfg, model, optimizer, scheduler, save_dir=cfg.OUTPUT_DIR, save_to_disk=is_main_process()
    )
    extra = checkpointer.load(cfg.MODEL.WEIGHT)
    start_iter = int(extra.get("iteration", 0))
    if grad_scaler is not None and "grad_scaler" in extra:
        grad_scaler.load_state_dict(extra["grad_scaler"])

    train_model = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None,
        )

    data_loader = make_data_loader(cfg, is_train=True, is_distributed=distributed, start_iter=start_iter)

    def evaluate(iteration):
        output_root = os.path.join(cfg.OUTPUT_DIR, "inference", f"iter_{iteration:07d}") if cfg.OUTPUT_DIR else None
        inference_on_datasets(cfg, model, device, output_root)

    do_train(
        train_model,
        data_loader,
        optimizer,
        scheduler,
        checkpointer,
        device,
        start_iter=start_iter,
        max_iter=cfg.SOLVER.MAX_ITER,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        log_period=cfg.SOLVER.LOG_PERIOD,
        mixed_precision=cfg.SOLVER.MIXED_PRECISION,
        grad_scaler=grad_scaler,
        eval_period=0 if skip_test else cfg.TEST.EVAL_PERIOD,
        eval_fn=evaluate,
        metrics_path=os.path.join(cfg.OUTPUT_DIR, "train_metrics.jsonl") if cfg.OUTPUT_DIR else None,
    )
    return model


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    device = init_process(cfg.MODEL.DEVICE, args.local_rank)
    try:
        output_dir = cfg.OUTPUT_DIR
        if output_dir and is_main_process():
            os.makedirs(output_dir, exist_ok=True)
        logger = setup_logger("atss_core", output_dir, get_rank())
        start_run(cfg, args, device, logger, "config.yml")

        model = train(cfg, device, args.seed, skip_test=args.skip_test)
        if not args.skip_test:
            output_root = os.path.join(output_dir, "inference") if output_dir else None
            inference_on_datasets(cfg, model, device, output_root)
        logger.info("Done: the checkpoints, logs and results are in %s", os.path.abspath(output_dir))
        return model
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, DatasetNotFoundError, FileNotFoundError, NonFiniteLossError) as e:
        sys.exit(f"train_net.py: error: {e}")

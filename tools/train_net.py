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

One run per OUTPUT_DIR: a run locks ``OUTPUT_DIR/.lock`` while it lives and a
second one in the same folder stops, naming the first (a killed run's lock
goes with its process). A run that stops on a non-finite or exploding loss
points ``last_checkpoint`` at the last checkpoint saved while the loss was
sane (``last_good_checkpoint``). Errors of the configuration, data, weights,
disk or a diverged training end with one ``train_net.py: error: ...`` line and
exit status 2.
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
    run_tool,
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
from atss_core.utils.checkpoint import (  # noqa: E402
    CheckpointError,
    DetectronCheckpointer,
    resolve_weight_path,
)
from atss_core.utils.comm import get_rank, get_world_size, init_process, is_main_process  # noqa: E402
from atss_core.utils.io import DiskFullError, format_bytes, remove_stale_temporaries  # noqa: E402
from atss_core.utils.logger import setup_logger  # noqa: E402
from atss_core.utils.run_lock import RunLockError, lock_output_dir  # noqa: E402
from atss_core.utils.weights_check import NonFiniteWeightsError, check_finite_state_dict  # noqa: E402

# Errors of this framework that end the tool with one message (exit status 2);
# anything else keeps its traceback.
TOOL_ERRORS = (ConfigError, CheckpointError, DatasetNotFoundError, FileNotFoundError,
               NonFiniteLossError, NonFiniteWeightsError, RunLockError, DiskFullError)
# Files of OUTPUT_DIR that only a training run writes atomically: their
# temporaries (".<name>.<random>.tmp") left by a killed run are removed when
# the next run starts.
TRAINING_TEMPORARIES = r"model_[^/]*\.pth|last_checkpoint|last_good_checkpoint|config\.yml"


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
  last_checkpoint, last_good_checkpoint) and, unless --skip-test, inference/<dataset>/
  with bbox.json and metrics.json. A run whose OUTPUT_DIR holds a last_checkpoint
  resumes from it. One run at a time per OUTPUT_DIR (OUTPUT_DIR/.lock).
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
    # What load() reads: the folder's last checkpoint, else MODEL.WEIGHT.
    loaded_from = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
    extra = checkpointer.load(cfg.MODEL.WEIGHT)
    loaded_from = loaded_from or (resolve_weight_path(cfg.MODEL.WEIGHT) if cfg.MODEL.WEIGHT else None)
    if loaded_from:
        check_finite_state_dict(model.state_dict(), loaded_from)
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
        resumed_from=loaded_from if start_iter > 0 else None,
        loss_history=extra.get("loss_history"),
    )
    return model


def remove_leftover_temporaries(output_dir, logger):
    """Remove the temporary files a killed run left in ``output_dir`` while
    saving (call it holding the folder's lock); returns how many."""
    removed = remove_stale_temporaries(output_dir, TRAINING_TEMPORARIES)
    if removed:
        logger.info(
            "Removed %d temporary file(s) (%s) left in %s by a run killed while saving: %s",
            len(removed), format_bytes(sum(size for _, size in removed)), output_dir,
            ", ".join(os.path.basename(path) for path, _ in removed),
        )
    return len(removed)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    device = init_process(cfg.MODEL.DEVICE, args.local_rank)
    lock = None
    try:
        output_dir = cfg.OUTPUT_DIR
        if output_dir and is_main_process():
            os.makedirs(output_dir, exist_ok=True)
        # Before anything is written there: a second run in the folder stops here.
        lock = lock_output_dir(output_dir) if output_dir else None
        logger = setup_logger("atss_core", output_dir, get_rank())
        if lock is not None:
            remove_leftover_temporaries(output_dir, logger)
        start_run(cfg, args, device, logger, "config.yml")

        model = train(cfg, device, args.seed, skip_test=args.skip_test)
        if not args.skip_test:
            output_root = os.path.join(output_dir, "inference") if output_dir else None
            inference_on_datasets(cfg, model, device, output_root)
        logger.info("Done: the checkpoints, logs and results are in %s", os.path.abspath(output_dir))
        return model
    finally:
        if lock is not None:
            lock.release()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def cli(argv=None):
    """:func:`main` as a command (exit status 2 and one line for :data:`TOOL_ERRORS`)."""
    return run_tool(main, "train_net.py", TOOL_ERRORS, argv)


if __name__ == "__main__":
    sys.exit(cli())

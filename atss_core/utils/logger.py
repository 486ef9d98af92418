"""Logging to the console and to ``OUTPUT_DIR/log.txt``.

Modules log through ``logging.getLogger(__name__)`` (names under
``atss_core``); the tools call :func:`setup_logger` once for the ``atss_core``
logger. Only the main process (rank 0) writes log lines; other ranks print
warnings and errors to stderr only.
"""
import logging
import os
import sys

from tqdm import tqdm

FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _TqdmStreamHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write`` so that log lines do
    not break an active progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # same contract as logging.StreamHandler.emit
            self.handleError(record)


def setup_logger(name, save_dir, distributed_rank, filename="log.txt"):
    """Configure and return the logger ``name``.

    Rank 0 logs INFO and above to stdout and, when ``save_dir`` is non-empty,
    DEBUG and above to ``save_dir/filename`` (appended to, so a resumed run
    continues the same file): what only the log file needs (the full config, the
    command line) is logged at DEBUG.
    Other ranks log WARNING and above to stderr. Calling it again replaces the
    handlers it installed before (tests and notebooks call it several times).
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter(FORMAT)

    if distributed_rank > 0:
        handler = logging.StreamHandler(stream=sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"[rank {distributed_rank}] " + FORMAT))
        logger.addHandler(handler)
        return logger

    console = _TqdmStreamHandler(stream=sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(save_dir, filename), mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger

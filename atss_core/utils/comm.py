"""Helpers for single- and multi-process (torch.distributed) runs.

Every function works without torch.distributed initialised (one process)."""
import os
import pickle
import platform

import torch
import torch.distributed as dist

from atss_core.config import ConfigError


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_main_process():
    return get_rank() == 0


def synchronize():
    """Barrier across processes (no-op with one process)."""
    if get_world_size() > 1:
        dist.barrier()


def _comm_device():
    # NCCL only moves CUDA tensors; Gloo moves CPU tensors.
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor):
    """Sum of ``tensor`` over processes (a new tensor; the input is unchanged)."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(data):
    """List of ``data`` (any picklable object) from every process, in rank order."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    device = _comm_device()
    payload = torch.frombuffer(bytearray(pickle.dumps(data)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    max_size = max(sizes)
    padded = torch.zeros(max_size, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    buffers = [torch.empty(max_size, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(buffers, padded)
    return [pickle.loads(buf[:n].cpu().numpy().tobytes()) for buf, n in zip(buffers, sizes)]


def reduce_dict(input_dict, average=True):
    """Values of a dict of scalar tensors, summed (or averaged) over processes;
    meant for logging."""
    world_size = get_world_size()
    if world_size == 1:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k].detach().float().reshape(()) for k in names])
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        if average:
            values /= world_size
        return dict(zip(names, values))


def init_process(device_name, local_rank):
    """Set up this process of a run and return its device.

    Launched with several processes (``$WORLD_SIZE`` > 1, as
    ``torch.distributed.launch`` and ``torchrun`` do), it joins the process group:
    NCCL when ``device_name`` is cuda (each process takes the GPU of its local
    rank), Gloo for cpu. Raises ConfigError (naming MODEL.DEVICE) when the
    device cannot be used."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"MODEL.DEVICE is {device_name} but torch sees no GPU; pass MODEL.DEVICE cpu to run on the CPU"
            )
        if world_size > 1:
            if device.index is not None:
                raise ConfigError(
                    f"MODEL.DEVICE {device_name} names one GPU, but {world_size} processes were "
                    "launched; use MODEL.DEVICE cuda (each process takes the GPU of its local rank)"
                )
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"process with local rank {local_rank} has no GPU: only {torch.cuda.device_count()} "
                    "are visible; launch at most that many processes per node"
                )
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        synchronize()
    return device


def environment_summary(device):
    """Python, PyTorch, platform, device and process count, for the log."""
    lines = [
        f"Python {platform.python_version()}, PyTorch {torch.__version__}, platform {platform.platform()}",
        f"device {device}, {get_world_size()} process(es)",
    ]
    if device.type == "cuda":
        lines.append(f"CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(device)}")
    else:
        lines.append(f"{torch.get_num_threads()} CPU threads per process, "
                     f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    return "\n".join(lines)

"""Helpers for single- and multi-process (torch.distributed) runs.

Every function works without torch.distributed initialised (one process)."""
import pickle

import torch
import torch.distributed as dist


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

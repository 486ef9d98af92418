"""A batch sampler that runs for a number of iterations instead of epochs."""
from torch.utils.data import Sampler


class IterationBasedBatchSampler(Sampler):
    """Re-iterate ``batch_sampler`` (epoch 0, 1, ...) until ``num_iterations``
    batches in all, yielding those of iterations ``start_iter`` ..
    ``num_iterations - 1``.

    Before each epoch, ``set_epoch(epoch)`` is called on the underlying sampler
    when it has one (e.g. :class:`DistributedSampler`), so the order is a
    function of the epoch number. A run resumed at ``start_iter`` therefore gets
    exactly the batches the uninterrupted run would have got from that
    iteration on (the skipped batches are index lists only, cheap to replay).

    ``len()`` is ``num_iterations`` (the training length, as the reference's
    trainer expects), not the number of batches left.
    """

    def __init__(self, batch_sampler, num_iterations, start_iter=0):
        if num_iterations < 0 or start_iter < 0:
            raise ValueError(
                f"need num_iterations >= 0 and start_iter >= 0, got {num_iterations}, {start_iter}"
            )
        self.batch_sampler = batch_sampler
        self.num_iterations = int(num_iterations)
        self.start_iter = int(start_iter)

    def __iter__(self):
        iteration = 0
        epoch = 0
        sampler = getattr(self.batch_sampler, "sampler", None)
        while iteration < self.num_iterations:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            empty = True
            for batch in self.batch_sampler:
                empty = False
                if iteration >= self.start_iter:
                    yield batch
                iteration += 1
                if iteration >= self.num_iterations:
                    return
            if empty:
                raise RuntimeError("the batch sampler yields no batches: is the dataset empty?")
            epoch += 1

    def __len__(self):
        return self.num_iterations

"""A minimal job for the training loop's tests: one weight that counts the steps taken."""

import torch


class CountingJob:
    """Takes `steps` steps per epoch; each adds 1 to the weight and reports `loss_at(step)`."""

    kind = "test"

    def __init__(self, steps=3, loss_at=lambda step: 1.5, acc=None, count=8):
        self.weight = torch.zeros(1)
        self.steps, self.loss_at, self.acc, self.count = steps, loss_at, acc, count

    def steps_per_epoch(self):
        return self.steps

    def batches(self, epoch, start_step):
        return iter(range(start_step, self.steps))

    def begin_epoch(self, epoch):
        pass

    def train_step(self, step):
        self.weight += 1
        metrics = {"loss": torch.tensor(self.loss_at(step)), "count": torch.tensor(self.count)}
        if self.acc is not None:
            metrics["acc"] = torch.tensor(self.acc)
        return metrics

    def end_epoch(self, epoch):
        return {}

    def state_dict(self):
        return {"weight": self.weight.clone()}

    def load_state_dict(self, state):
        self.weight = state["weight"]

    def tensorboard(self, writer, epoch, metrics):
        pass

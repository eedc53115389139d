"""An example of your own loss for `train.py --loss` and `hie_ref.py study --losses`:

    python hie_ref.py study --folds 5 --losses tversky tversky_hdt examples/my_losses.py:FocalTversky

A loss is an nn.Module class constructed with no arguments, or a function
f(logits, target) -> scalar tensor; logits (B,1,X,Y,Z), target {0,1} of the same shape.
Its name in the tables is the class's (or function's) name.
"""
import torch


class FocalTversky(torch.nn.Module):
    """Focal Tversky loss (Abraham & Khan 2019): (1 - TI)^gamma, TI the Tversky index with
    alpha = 0.3 on false positives and beta = 0.7 on false negatives, gamma = 0.75: a
    small lesion that is mostly missed weighs more than in the plain Tversky loss."""

    def __init__(self, alpha=0.3, beta=0.7, gamma=0.75, eps=1e-5):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.eps = alpha, beta, gamma, eps

    def forward(self, logits, target):
        p = torch.sigmoid(logits.float())
        dims = tuple(range(2, p.ndim))
        tp = (p * target).sum(dims)
        fp, fn = p.sum(dims) - tp, target.sum(dims) - tp
        index = (tp + self.eps) / (tp + self.alpha * fp + self.beta * fn + self.eps)
        return ((1 - index).clamp(min=0) ** self.gamma).mean()

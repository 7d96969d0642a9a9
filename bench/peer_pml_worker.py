"""The pytorch-metric-learning side of `bench/peer_parity.py`; runs in the bench's own virtualenv.

It never imports tfsim or TensorFlow: `peer_parity.py` hands it the very pixels tfsim trains
on (decoded and resized by tfsim's own pipeline) in an .npz, and reads back the held-out
embeddings, which it scores with tfsim's metrics like every other row of the table.

The recipe is the one a PML user writes (PML 2.9):

* model: the small ResNet tfsim builds (`tfsim.models.backbones.small_resnet`), layer for
  layer: pixels / 127.5 - 1, 3x3 stem conv (no bias) + BatchNorm + ReLU, then per stage one
  basic block (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU; stride 2 and a 1x1 conv +
  BN shortcut from the second stage on) at widths w, 2w, 4w, global average pooling, a
  dense projection, L2 normalisation. PyTorch's own initialisers and BatchNorm settings
  (gamma 1, momentum 0.1, eps 1e-5).
* batches: `samplers.MPerClassSampler` (m images per class, P classes per batch);
* loss: `losses.TripletMarginLoss(margin)` on the triplets of
  `miners.TripletMarginMiner(margin, type_of_triplets=...)`, both with PML's default
  `LpDistance` (normalised embeddings, Euclidean);
* Adam at a constant learning rate; a random shift of up to `shift` pixels (zero padding).

Usage (by peer_parity.py): python peer_pml_worker.py IN.npz OUT.npz --steps N ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class SmallResNet(nn.Module):
    def __init__(self, width: int = 32, blocks_per_stage: int = 1, embedding_dim: int = 128):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage, mult in enumerate((1, 2, 4)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.projection = nn.Linear(cin, embedding_dim)

    def forward(self, pixels):  # [B, 3, S, S] in [0, 255]
        x = self.blocks(self.stem(pixels / 127.5 - 1.0))
        return F.normalize(self.projection(x.mean(dim=(2, 3))), dim=1)


def shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by a uniform integer offset in [-pixels, pixels] per axis, zero fill."""
    if pixels <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    off = torch.randint(0, 2 * pixels + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(b)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs")
    p.add_argument("outputs")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--classes-per-batch", type=int, default=5)
    p.add_argument("--examples-per-class", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--triplets", default="semihard")
    p.add_argument("--shift", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks-per-stage", type=int, default=1)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keras-init", action="store_true",
                   help="Keras's defaults instead of torch's: Glorot-uniform kernels, zero biases, BatchNorm "
                        "eps 1e-3, Adam eps 1e-7 (to measure what the frameworks' defaults alone change)")
    args = p.parse_args()

    from pytorch_metric_learning import losses, miners, samplers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # MPerClassSampler draws from numpy's global generator
    gen = torch.Generator().manual_seed(args.seed)
    with np.load(args.inputs) as npz:
        train_x = torch.from_numpy(npz["train_images"]).permute(0, 3, 1, 2).float()  # [N, 3, S, S]
        train_y = torch.from_numpy(npz["train_labels"]).long()
        test_x = torch.from_numpy(npz["test_images"]).permute(0, 3, 1, 2).float()

    model = SmallResNet(args.width, args.blocks_per_stage, args.embedding_dim)
    if args.keras_init:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3
    batch = args.classes_per_batch * args.examples_per_class
    sampler = samplers.MPerClassSampler(train_y.numpy(), m=args.examples_per_class, batch_size=batch,
                                        length_before_new_iter=args.steps * batch)
    rows = torch.tensor(list(iter(sampler)), dtype=torch.long).reshape(-1, batch)[:args.steps]
    miner = miners.TripletMarginMiner(margin=args.margin, type_of_triplets=args.triplets)
    loss_fn = losses.TripletMarginLoss(margin=args.margin)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=1e-7 if args.keras_init else 1e-8)

    start = time.perf_counter()
    model.train()
    for r in rows:
        x, y = shift(train_x[r], args.shift, gen), train_y[r]
        emb = model(x)
        loss = loss_fn(emb, y, miner(emb, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        test_emb = torch.cat([model(test_x[i:i + 256]) for i in range(0, len(test_x), 256)]).numpy()
    np.savez(args.outputs, embeddings=test_emb.astype(np.float32), train_seconds=train_seconds,
             last_loss=float(loss.detach()))


if __name__ == "__main__":
    main()

"""The paper's three-level 3D U-Net (paper 3.2.2; SPEC 4).

Self-contained: imports torch only, so this one file can be copied into another project.

    encoder x3 : [Conv3d k3 -> BatchNorm3d -> LeakyReLU -> Dropout3d] x2, then MaxPool3d(2)
    bottleneck : the same double conv
    decoder x3 : ConvTranspose3d(k2, s2) -> concatenate the skip -> double conv
    head       : Conv3d k1 -> 1 channel of logits (sigmoid gives the lesion probability)

Three levels instead of the usual four: fewer parameters for a dataset of 85 cases.
Not in the paper, decided here (SPEC 4; docs/specification.md, "Decided here"): widths
32/64/128, bottleneck 256; dropout as Dropout3d (whole channels) after each convolution's
activation, rising with depth, 0.1/0.2/0.3 and 0.4 at the bottleneck, the decoder mirroring
the encoder; LeakyReLU slope 0.01. ``prior`` (off by default, the paper's PyTorch init) sets
the head's bias to log(prior / (1 - prior)) so that training starts from a small lesion
probability everywhere (Lin et al. 2017): region losses then converge in far fewer steps.
"""
import math

import torch
import torch.nn as nn

__all__ = ["UNet3D", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """[Conv3d k3 p1 -> BatchNorm3d -> LeakyReLU -> Dropout3d] x 2.

    No conv bias: the BatchNorm that follows subtracts the mean, which would cancel it.
    """

    def __init__(self, in_channels, out_channels, dropout, negative_slope=0.01):
        layers = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv3d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.LeakyReLU(negative_slope, inplace=True),
                nn.Dropout3d(dropout),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z) logits; X, Y, Z divisible by 8.

    Args:
        in_channels: input maps (2: ADC and ZADC).
        out_channels: output logits (1: lesion).
        widths: channels of the three encoder levels.
        bottleneck: channels at the bottleneck.
        dropout: Dropout3d rate of the three encoder levels (the decoder mirrors it).
        bottleneck_dropout: Dropout3d rate at the bottleneck.
        negative_slope: LeakyReLU slope.
        prior: None (PyTorch's default init of the head, the paper's) or the lesion
            probability, in (0, 1), that the untrained network predicts everywhere.
    """

    def __init__(self, in_channels=2, out_channels=1, widths=(32, 64, 128), bottleneck=256,
                 dropout=(0.1, 0.2, 0.3), bottleneck_dropout=0.4, negative_slope=0.01, prior=None):
        super().__init__()
        if len(widths) != 3 or len(dropout) != 3:
            raise ValueError(f"widths and dropout: expected 3 values each (three levels), got {widths}, {dropout}")
        if prior is not None and not 0 < prior < 1:
            raise ValueError(f"prior: expected a probability in (0, 1) or None, got {prior!r}")
        self.in_channels = in_channels
        self.encoders = nn.ModuleList()
        c_in = in_channels
        for width, rate in zip(widths, dropout):
            self.encoders.append(DoubleConv(c_in, width, rate, negative_slope))
            c_in = width
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = DoubleConv(c_in, bottleneck, bottleneck_dropout, negative_slope)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        c_in = bottleneck
        for width, rate in zip(reversed(widths), reversed(dropout)):
            self.ups.append(nn.ConvTranspose3d(c_in, width, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(2 * width, width, rate, negative_slope))   # skip + upsampled
            c_in = width
        self.head = nn.Conv3d(c_in, out_channels, kernel_size=1)
        if prior is not None:
            nn.init.constant_(self.head.bias, math.log(prior / (1 - prior)))

    def forward(self, x):
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"input: expected (B, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"input: expected X, Y, Z divisible by 8 (three 2x poolings), got {tuple(x.shape[2:])}")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        return self.head(x)

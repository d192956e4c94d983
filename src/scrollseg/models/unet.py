"""A 3D residual-encoder U-Net in the style of nnU-Net's ResEnc presets.

Written here rather than imported: nnU-Net's dynamic-network-architectures pulls
timm and torchvision, which replace a CPU torch with a multi-GB CUDA build.
Stage i of the encoder has ``encoder_blocks[i]`` residual blocks (conv-IN-LeakyReLU
twice, with a projected shortcut when the shape changes) and halves the resolution
from stage 1 on. The decoder upsamples with transposed convolutions, concatenates
the skip and applies ``decoder_blocks`` conv blocks. With deep supervision it returns
one logit map per decoder stage, highest resolution first.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True, eps=1e-5)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv3d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.LeakyReLU(0.01, inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBlock(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv3d(cout, cout, 3, 1, 1, bias=False), _norm(cout))
        self.shortcut = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(
                nn.AvgPool3d(stride, stride) if stride > 1 else nn.Identity(),
                nn.Conv3d(cin, cout, 1, bias=False),
                _norm(cout),
            )
        )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResEncUNet(nn.Module):
    def __init__(self, features: list[int], encoder_blocks: list[int], decoder_blocks: int = 1, deep_supervision: bool = True, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.stem = ConvBlock(in_channels, features[0])
        self.encoder = nn.ModuleList()
        cin = features[0]
        for i, (cout, n) in enumerate(zip(features, encoder_blocks)):
            blocks = [ResidualBlock(cin, cout, 2 if i > 0 else 1)]
            blocks += [ResidualBlock(cout, cout) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            cin = cout
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(len(features) - 1, 0, -1):
            hi, lo = features[i], features[i - 1]
            self.upsample.append(nn.ConvTranspose3d(hi, lo, 2, 2, bias=False))
            self.decoder.append(nn.Sequential(ConvBlock(2 * lo, lo), *[ConvBlock(lo, lo) for _ in range(decoder_blocks - 1)]))
            self.heads.append(nn.Conv3d(lo, out_channels, 1))

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.encoder) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        x = skips.pop()
        for up, dec, head in zip(self.upsample, self.decoder, self.heads):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if self.deep_supervision and self.training:
                outputs.append(head(x))
        if not (self.deep_supervision and self.training):
            return self.heads[-1](x)
        return outputs[::-1]


def build_model(cfg: ModelConfig) -> ResEncUNet:
    return ResEncUNet(cfg.features, cfg.encoder_blocks, cfg.decoder_blocks, cfg.deep_supervision)

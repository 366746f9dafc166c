"""The zoo's nn.Modules: tiny widths, one of each architecture users bring."""

from __future__ import annotations

import torch
from torch import nn


class MLPBatchNorm(nn.Module):
    def __init__(self, features: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(features, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    def forward(self, x):
        return self.net(x)  # (B, classes)


class MLPLayerNorm(nn.Module):
    def __init__(self, features: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(features, 64),
            nn.LayerNorm(64),
            nn.GELU(),
            nn.Linear(64, 64),
            nn.LayerNorm(64),
            nn.GELU(),
            nn.Linear(64, classes),
        )

    def forward(self, x):
        return self.net(x)


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),  # depthwise
        nn.BatchNorm2d(cin),
        nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False),  # pointwise
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class DepthwiseCNN(nn.Module):
    """MobileNet-style: a stem conv, then depthwise-separable blocks, pooled, Linear head."""

    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(_separable(16, 32, 1), _separable(32, 64, 2), _separable(64, 64, 1))
        self.head = nn.Linear(64, classes)

    def forward(self, image):  # (B, 1, 8, 8)
        h = self.blocks(self.stem(image))  # (B, 64, 4, 4)
        return self.head(h.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))  # the residual


class ResNetSmall(nn.Module):
    def __init__(self, classes: int, channels: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.layers = nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.fc = nn.Linear(channels, classes)

    def forward(self, image):
        return self.fc(self.layers(self.stem(image)).mean(dim=(2, 3)))


class TemporalCNN(nn.Module):
    """Dilated causal-ish 1-D convolutions over a window: (B, T) -> (B, 1)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.Sequential(
            nn.Conv1d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.head = nn.Linear(channels, 1)

    def forward(self, series):  # (B, T)
        h = self.convs(series.unsqueeze(1))  # (B, C, T)
        return series[:, -1:] + self.head(h[:, :, -1])


class RecurrentClassifier(nn.Module):
    """A 2-layer bidirectional LSTM / GRU over (B, T, F), last step's both directions -> classes."""

    def __init__(self, features: int, classes: int, cell=nn.LSTM, hidden: int = 24):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(features, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, seq):
        out, _ = self.rnn(seq)  # (B, T, 2H)
        return self.head(out[:, -1])


class GRUTimeMajor(nn.Module):
    """A 2-layer bidirectional GRU with batch_first=False: the window is turned to (T, B, 1)."""

    def __init__(self, hidden: int = 24):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(1, hidden, num_layers=2, bidirectional=True)  # time-major
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, series):  # (B, T)
        out, _ = self.rnn(series.t().unsqueeze(-1))  # (T, B, 2H)
        return series[:, -1:] + self.head(out[-1])


class LSTMForecaster(nn.Module):
    """LSTM over a window of 32 -> the next value, as a change from the window's last value."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, window):  # (B, 32)
        out, _ = self.rnn(window.unsqueeze(-1))  # (B, 32, H)
        return window[:, -1:] + self.head(out[:, -1])


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoder, 2 layers, batch_first, mean over time, Linear head."""

    def __init__(self, features: int, classes: int, d_model: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, seq):  # (B, T, F)
        return self.head(self.encoder(self.proj(seq)).mean(dim=1))


class AttentionClassifier(nn.Module):
    """One nn.MultiheadAttention block (self-attention + residual + LayerNorm + FFN)."""

    def __init__(self, features: int, classes: int, d_model: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(features, d_model)
        self.attn = nn.MultiheadAttention(d_model, 4, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 64), nn.ReLU(), nn.Linear(64, d_model))
        self.head = nn.Linear(d_model, classes)

    def forward(self, seq):
        h = self.proj(seq)  # (B, T, D)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        return self.head((h + self.ffn(h)).mean(dim=1))


class Recommender(nn.Module):
    """User / item embeddings (categorical int64) plus dense floats -> a rating."""

    def __init__(self, users: int, items: int, dense: int, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.users = nn.Embedding(users, dim)
        self.items = nn.EmbeddingBag(items, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(2 * dim + dense, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, ids, dense):  # ids (B, 2) int64, dense (B, F)
        u = self.users(ids[:, 0])  # (B, D)
        i = self.items(ids[:, 1:])  # a bag of one item per row: (B, D)
        return self.mlp(torch.cat([u, i, dense], dim=1))


class TwoTower(nn.Module):
    """Query tower (EmbeddingBag over tokens + MLP) and item tower (MLP), each normalised;
    the pair's embedding is both towers side by side."""

    def __init__(self, vocab: int, item_features: int, dim: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.query_bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.query = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.item = nn.Sequential(nn.Linear(item_features, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, query, item):  # (B, L) int64, (B, F)
        q = nn.functional.normalize(self.query(self.query_bag(query)), dim=1)
        i = nn.functional.normalize(self.item(item), dim=1)
        return torch.cat([q, i], dim=1)  # (B, 2D)


class MultiOutput(nn.Module):
    """A shared trunk with two heads; forward returns (logits, auxiliary score)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.logits = nn.Linear(64, classes)
        self.aux = nn.Linear(64, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.logits(h), self.aux(h)


class TinyViT(nn.Module):
    """transformers' ViTModel (built from a config, no download) + a Linear head on [CLS]."""

    def __init__(self, classes: int):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(0)
        config = ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, classes)

    def forward(self, pixel_values):  # (B, 1, 8, 8)
        return self.head(self.vit(pixel_values).last_hidden_state[:, 0])


class DataDependent(nn.Module):
    """Branches on the data: one layer where a batch sums above 0, another elsewhere."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(8, 4)
        self.down = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.up(x)
        return self.down(x) - 3.0

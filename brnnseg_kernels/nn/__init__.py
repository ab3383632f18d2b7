"""nn.Modules built on the fused sweeps."""
from .renet import BiGRU2d, BiLSTM2d, BidirectionalRNNWeights

__all__ = ["BiGRU2d", "BiLSTM2d", "BidirectionalRNNWeights"]

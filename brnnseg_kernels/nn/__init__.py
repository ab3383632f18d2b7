"""nn.Modules built on the fused kernels: ReNet layers (``BiGRU2d``, ``BiLSTM2d``) and drop-in
``GRU`` / ``LSTM`` for ``torch.nn.GRU`` / ``torch.nn.LSTM`` (with ``replace_rnns`` / ``to_torch``)."""
from .renet import BiGRU2d, BiLSTM2d, BidirectionalRNNWeights
from .rnn import GRU, LSTM, replace_rnns, to_torch

__all__ = ["BiGRU2d", "BiLSTM2d", "BidirectionalRNNWeights", "GRU", "LSTM", "replace_rnns", "to_torch"]

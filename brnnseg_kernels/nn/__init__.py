"""nn.Modules built on the fused kernels: ReNet layers (``BiGRU2d``, ``BiLSTM2d``; volumes:
``BiGRU3d``, ``BiLSTM3d``) and drop-in
``GRU`` / ``LSTM`` for ``torch.nn.GRU`` / ``torch.nn.LSTM`` (with ``replace_rnns`` / ``to_torch``)."""
from .renet import BiGRU2d, BiLSTM2d, BidirectionalRNNWeights
from .renet3d import BiGRU3d, BiLSTM3d
from .rnn import GRU, LSTM, replace_rnns, to_torch

__all__ = ["BiGRU2d", "BiLSTM2d", "BiGRU3d", "BiLSTM3d", "BidirectionalRNNWeights", "GRU", "LSTM", "replace_rnns", "to_torch"]

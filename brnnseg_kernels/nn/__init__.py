"""nn.Modules built on the fused kernels, one of each per row of the cell table (``brnnseg_kernels.cells``):
ReNet layers (``BiGRU2d``, ``BiLSTM2d``, ...; volumes: ``BiGRU3d``, ...) and drop-ins for the torch modules
(``GRU``, ``LSTM``, ..., with ``replace_rnns`` / ``to_torch``)."""
from .. import cells
from . import renet, renet3d, rnn
from .renet import BidirectionalRNNWeights
from .rnn import replace_rnns, to_torch

for _fam in cells.FAMILIES:
    globals()[_fam.layer2d] = getattr(renet, _fam.layer2d)
    globals()[_fam.layer3d] = getattr(renet3d, _fam.layer3d)
    globals()[_fam.dropin] = getattr(rnn, _fam.dropin)

__all__ = (["BidirectionalRNNWeights", "replace_rnns", "to_torch"]
           + [n for f in cells.FAMILIES for n in (f.layer2d, f.layer3d, f.dropin)])
